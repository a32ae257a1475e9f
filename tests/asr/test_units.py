"""Unit tests of the engine's parts: incremental mel, audio buffer, text assembly, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.asr.engine.engine import to_float32
from services.asr.engine.events import to_pcm16
from services.asr.engine.features import IncrementalMel
from services.asr.engine.state import TextState
from services.asr.engine.table import ARRIVALS, StreamTable

from .conftest import babble


def test_incremental_mel_equals_offline(reference_model):
    features = IncrementalMel(reference_model.preprocessor, torch.device("cpu"))
    assert (features.lookback, features.lookahead) == (320, 40)  # DESIGN.md: [160a-320, 160b+40)
    audio = babble(2.0, 5)
    with torch.inference_mode():
        offline, n = reference_model.preprocessor(
            input_signal=torch.from_numpy(audio)[None], length=torch.tensor([len(audio)])
        )
    table = StreamTable(1, ring_samples=len(audio) + 1000, mirror=1000, first_need=1)
    row = table.take_row()
    table.write(row, audio, 0.0)
    for a, b in ((0, 9), (9, 25), (25, 41), (100, 156), (0, 105), (150, int(n[0]))):
        lo, hi = features.window(a, b)
        mel = features.compute(table.read(row, lo, hi, limit=len(audio))[None], b - a)
        assert mel.shape == (1, features.n_mels, b - a)
        assert torch.equal(mel[0], offline[0, :, a:b]), (a, b)


def test_stream_table_ring_wraps_mirrors_and_zero_extends():
    """Every window of a stream pushed in odd pieces reads as the audio itself, across wraps."""
    ring, mirror = 50, 12
    table = StreamTable(3, ring_samples=ring, mirror=mirror, first_need=5)
    rows = [table.take_row() for _ in range(3)]
    audio = np.arange(1, 401, dtype=np.float32)
    rng = np.random.default_rng(3)
    pos = {row: 0 for row in rows}
    for step in range(200):
        row = rows[step % 3]
        # Keep at most ring - mirror samples unread, as the engine's backlog check does.
        n = int(rng.integers(1, 9))
        n = min(n, len(audio) - pos[row])
        if not n:
            continue
        table.write(row, audio[pos[row] : pos[row] + n], float(step))
        pos[row] += n
        # Windows (one gather for all rows) of the newest `mirror` samples, and single reads.
        lo = np.array([max(pos[r] - mirror, -3) for r in rows])
        got = table.gather(np.array(rows), lo, mirror, "test").numpy()
        for i, r in enumerate(rows):
            want = np.zeros(mirror, np.float32)
            for j in range(mirror):
                k = lo[i] + j
                if 0 <= k < pos[r]:
                    want[j] = audio[k]
            if pos[r] >= mirror:  # a window past `written` is never asked for
                assert got[i].tolist() == want.tolist(), (step, r)
        hi = pos[row]
        assert table.read(row, hi - 20, hi + 3, limit=hi - 1).tolist() == [
            float(audio[k]) if 0 <= k < hi - 1 else 0.0 for k in range(hi - 20, hi + 3)
        ]
    # A window older than the ring is refused, not read as newer audio.
    with pytest.raises(RuntimeError):
        table.read(rows[0], 0, 10, limit=10)
    # A new utterance's clock starts at its base.
    table.base[rows[0]] = pos[rows[0]] - 4
    assert (
        table.read(rows[0], -2, 4, limit=4).tolist()
        == [0, 0] + audio[pos[rows[0]] - 4 : pos[rows[0]]].tolist()
    )


def test_stream_table_arrivals_and_cleared_rows():
    table = StreamTable(2, ring_samples=1000, mirror=100, first_need=7)
    row = table.take_row()
    for k in range(ARRIVALS + 5):  # more pushes than records
        table.write(row, np.ones(10, np.float32), 100.0 + k)
    rows = np.array([row, row])
    # Audio complete after push 34 arrived with it; a moment older than every record gets
    # the oldest record kept (push 5).
    assert table.arrival_times(rows, np.array([350, 10])).tolist() == [134.0, 105.0]
    table.slot[row] = 3
    table.mel_pos[row] = 9
    table.give_back(row)
    again = table.take_row()
    assert again == row  # the newest freed row is reused first
    assert (table.written[row], table.mel_pos[row], table.slot[row]) == (0, 0, -1)
    assert table.next_needed[row] == 7
    assert np.isnan(table.arrival_times(np.array([row]), np.array([1]))[0])


def _sentencepiece_like(vocab: list[str]):
    def detok(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids).replace("\u2581", " ").strip()

    return detok


def test_text_state_compaction_matches_one_shot_decode():
    vocab = ["\u2581the", "\u2581cat", "s", "\u2581sat", ".", "\u2581on", "\u2581a", "\u2581mat"]
    detok = _sentencepiece_like(vocab)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(vocab), 2000).tolist()
    text = TextState(detok, max_chars=10**6, max_tail=64, keep_tail=8)
    for i in range(0, len(ids), 7):
        text.extend(ids[i : i + 7])
        assert text.text == detok(ids[: i + 7])
    assert len(text.tail) <= 64
    assert text.preview([1, 2]) == detok(ids + [1, 2]) and text.text == detok(ids)
    snapshot = text.snapshot()
    text.extend([3])
    assert snapshot.text == detok(ids)
    capped = TextState(detok, max_chars=50, max_tail=64, keep_tail=8)
    capped.extend(ids)
    assert capped.text == detok(ids)[-50:]


def test_to_float32_accepts_pcm16_and_arrays():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    assert to_float32(pcm.tobytes()).tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    assert to_float32(bytearray(pcm.tobytes())).dtype == np.float32
    assert to_float32(pcm).tolist() == to_float32(pcm.tobytes()).tolist()
    floats = np.array([0.25, -0.5], dtype=np.float32)
    assert to_float32(floats).tolist() == [0.25, -0.5]
    for bad in (b"\x00\x01\x02", np.zeros((2, 2), np.float32), np.zeros(3, np.int32), [0.1]):
        with pytest.raises(ValueError):
            to_float32(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_to_float32_and_to_pcm16_reject_non_finite_samples(dtype, value):
    audio = np.full(320, 0.25, dtype)
    audio[[3, 200]] = value
    for convert in (to_float32, to_pcm16):
        with pytest.raises(ValueError, match="2 non-finite sample") as info:
            convert(audio)
        # Says what to send instead.
        assert "finite float samples in [-1, 1] or int16 PCM" in str(info.value)


def test_to_float32_checks_after_the_cast_and_keeps_finite_edges():
    # float64 past float32's range would turn into Inf on the way to the model.
    with np.errstate(over="ignore"), pytest.raises(ValueError, match="1 non-finite sample"):
        to_float32(np.array([0.0, 1e300]))
    # The edges of what is finite are still accepted, and int16 is never checked.
    edge = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0], np.float32)
    assert np.isfinite(to_float32(edge)).all() and len(to_pcm16(edge)) == 6
    assert to_float32(np.array([-32768, 32767], np.int16)).tolist() == [-1.0, 32767 / 32768]


def test_push_audio_rejects_non_finite_samples_and_the_stream_keeps_working(make_engine):
    engine = make_engine(chunk_ms=160)
    first, second = babble(0.8, seed=31), babble(0.8, seed=32)
    clean = engine.open_stream()
    clean.push_audio(first)
    clean.push_audio(second)
    expected = clean.finalize_sync(timeout=30)
    assert expected.text  # the tiny model's garbage text: a real comparison below

    stream = engine.open_stream()
    stream.push_audio(first)
    for value in (np.nan, np.inf, -np.inf):
        spoiled = second.copy()
        spoiled[100] = value
        with pytest.raises(ValueError, match="1 non-finite sample.*int16 PCM"):
            stream.push_audio(spoiled)
    stream.push_audio(second)  # nothing of the refused pushes was kept
    final = stream.finalize_sync(timeout=30)
    assert final.text == expected.text
    assert final.audio_end_s == expected.audio_end_s == pytest.approx(1.6)


def test_final_rows_reaches_the_engine_config_from_the_server_flags():
    import argparse
    from types import SimpleNamespace

    from agent.asr_server_cmd import add_engine_options, engine_options
    from services.asr.engine.config import EngineConfig
    from services.asr.server.engine_options import serving_engine_config

    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    stt = SimpleNamespace(model="m.nemo", device="cpu", dtype="fp32", chunk_ms=160, encoder="fast")
    for flags, want in (([], None), (["--final-rows", "0"], 0), (["--final-rows", "32"], 32)):
        options = engine_options(parser.parse_args(flags), stt)
        assert serving_engine_config(options, dtype_chosen=True).final_rows == want
    # None resolves per device: a few rows on CPU, a share of the streams on CUDA.
    assert EngineConfig(max_streams=4000).resolved_final_rows("cuda") == 250
    assert EngineConfig(max_streams=64).resolved_final_rows("cuda:0") == 8
    assert EngineConfig(max_streams=4000).resolved_final_rows("cpu") == 4
    with pytest.raises(ValueError, match="final_rows"):
        EngineConfig(final_rows=-1)
