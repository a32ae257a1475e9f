"""Config validation, model loading (path and hub id), the shared engine registry."""

from __future__ import annotations

import numpy as np
import pytest

from services.asr.engine import (
    DEFAULT_MODEL,
    ASREngine,
    EngineConfig,
    ModelLoadError,
    get_engine,
)

from .conftest import babble


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("chunk_ms", 100, "160"),
        ("device", "gpu", "cuda"),
        ("dtype", "fp16", "bf16"),
        ("max_streams", 0, ">= 1"),
        ("max_batch", -1, ">= 1"),
        ("batch_buckets", (4, 2), "increasing"),
        ("cuda_graphs", "yes", "True"),
        ("model", "", "Hugging Face"),
    ],
)
def test_config_errors_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        EngineConfig(**{field: value})
    message = str(info.value)
    assert field in message and repr(value) in message and allowed in message


def test_config_defaults_and_chunk_modes():
    config = EngineConfig()
    assert config.model == DEFAULT_MODEL == "nvidia/nemotron-speech-streaming-en-0.6b"
    assert (config.device, config.dtype, config.chunk_ms) == ("auto", "fp32", 160)
    right = {ms: EngineConfig(chunk_ms=ms).att_context_size for ms in (80, 160, 560, 1120)}
    assert right == {80: [70, 0], 160: [70, 1], 560: [70, 6], 1120: [70, 13]}
    assert EngineConfig(device="cuda:1").device == "cuda:1"
    assert EngineConfig(batch_buckets=[1, 4]).batch_buckets == (1, 4)


def test_missing_model_file_says_what_to_do(tmp_path):
    missing = tmp_path / "nope.nemo"
    with pytest.raises(ModelLoadError) as info:
        ASREngine(EngineConfig(model=str(missing), device="cpu"))
    assert str(missing) in str(info.value) and "Hugging Face id" in str(info.value)


def test_chunk_modes_have_the_verified_step_shapes(make_engine):
    for chunk_ms, first, later in ((80, 1, 8), (160, 9, 16), (560, 49, 56), (1120, 105, 112)):
        engine = make_engine(chunk_ms=chunk_ms, warmup=False)
        assert (engine._runner.chunk_first, engine._runner.chunk) == (first, later)
        assert engine.model.encoder.att_context_size == [70, engine.config.right_context]
        featurizer = engine.model.preprocessor.featurizer
        assert (featurizer.dither, featurizer.pad_to, featurizer.normalize) == (0.0, 0, None)
        assert not engine.model.training
        engine.shutdown()


def test_hub_id_loads_through_from_pretrained(monkeypatch, tiny_nemo, offline):
    """The HF-id path: ``ASRModel.from_pretrained`` is faked to return the tiny model."""
    from nemo.collections.asr.models import ASRModel

    calls = []

    def fake_from_pretrained(model_name, map_location=None, **kwargs):
        calls.append((model_name, str(map_location)))
        return ASRModel.restore_from(tiny_nemo, map_location=map_location)

    monkeypatch.setattr(ASRModel, "from_pretrained", fake_from_pretrained)
    config = EngineConfig(model=DEFAULT_MODEL, device="cpu", chunk_ms=160)
    engine = get_engine(config)
    try:
        assert calls == [(DEFAULT_MODEL, "cpu")]
        assert get_engine(EngineConfig(model=DEFAULT_MODEL, device="cpu")) is engine
        assert engine.sample_rate == 16000 and engine.chunk_ms == 160
        audio = babble(1.0, 42)
        stream = engine.open_stream()
        stream.push_audio((audio * 32767).astype("<i2").tobytes())
        final = stream.finalize_sync(30)
        as_pcm16 = np.frombuffer((audio * 32767).astype("<i2").tobytes(), "<i2") / 32768.0
        padded = np.zeros(engine.padded_length(len(audio)), np.float32)
        padded[: len(audio)] = as_pcm16
        assert final.text == offline.transcript(padded, 1)
        # Another chunk mode is another engine (another model copy).
        other = get_engine(EngineConfig(model=DEFAULT_MODEL, device="cpu", chunk_ms=560))
        assert other is not engine and len(calls) == 2
        other.shutdown()
    finally:
        engine.shutdown()
    # The registry forgets a shut-down engine: the next get_engine loads a new one.
    again = get_engine(config)
    assert again is not engine
    again.shutdown()


def test_unreachable_hub_says_what_to_do(monkeypatch):
    from nemo.collections.asr.models import ASRModel

    def fake_from_pretrained_offline(model_name, map_location=None, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(ASRModel, "from_pretrained", fake_from_pretrained_offline)
    with pytest.raises(ModelLoadError) as info:
        ASREngine(EngineConfig(model="nvidia/some-model", device="cpu"))
    message = str(info.value)
    assert "nvidia/some-model" in message and "Network is unreachable" in message
    assert ".nemo" in message and "offline" in message
