"""Unit tests of the engine's parts: incremental mel, audio buffer, text assembly, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.asr.engine.engine import to_float32
from services.asr.engine.events import to_pcm16
from services.asr.engine.features import IncrementalMel
from services.asr.engine.state import AudioBuffer, TextState

from .conftest import babble


def test_incremental_mel_equals_offline(reference_model):
    features = IncrementalMel(reference_model.preprocessor, torch.device("cpu"))
    assert (features.lookback, features.lookahead) == (320, 40)  # DESIGN.md: [160a-320, 160b+40)
    audio = babble(2.0, 5)
    with torch.inference_mode():
        offline, n = reference_model.preprocessor(
            input_signal=torch.from_numpy(audio)[None], length=torch.tensor([len(audio)])
        )
    buffer = AudioBuffer()
    buffer.append(audio)
    for a, b in ((0, 9), (9, 25), (25, 41), (100, 156), (0, 105), (150, int(n[0]))):
        lo, hi = features.window(a, b)
        mel = features.compute(buffer.read(lo, hi)[None], b - a)
        assert mel.shape == (1, features.n_mels, b - a)
        assert torch.equal(mel[0], offline[0, :, a:b]), (a, b)


def test_audio_buffer_zero_extends_and_trims():
    buffer = AudioBuffer()
    buffer.append(np.arange(1, 11, dtype=np.float32))
    buffer.append(np.arange(11, 21, dtype=np.float32))
    assert buffer.read(-3, 2).tolist() == [0, 0, 0, 1, 2]
    assert buffer.read(18, 23).tolist() == [19, 20, 0, 0, 0]
    assert buffer.read(5, 10, limit=7).tolist() == [6, 7, 0, 0, 0]
    buffer.trim(15)
    assert buffer.held == 5 and buffer.read(15, 17).tolist() == [16, 17]
    with pytest.raises(RuntimeError):
        buffer.read(10, 16)
    buffer.clear()
    assert buffer.total == 0 and buffer.held == 0


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
