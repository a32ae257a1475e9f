"""Finals carry word times from the RNNT token frames, equal to NeMo's offline word offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import babble
from .test_exactness import CHUNK_FOR_R, push_in_pieces


def offline_words(model, audio: np.ndarray, right_context: int) -> list[tuple[str, float, float]]:
    """NeMo's own word offsets (offline encoder, greedy decode, compute_rnnt_timestamps)."""
    model.encoder.set_default_att_context_size([70, right_context])
    with torch.inference_mode():
        signal = torch.from_numpy(audio)[None]
        mel, mel_len = model.preprocessor(input_signal=signal, length=torch.tensor([len(audio)]))
        enc, enc_len = model.encoder(audio_signal=mel, length=mel_len)
        hyp = model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=enc, encoded_lengths=enc_len, return_hypotheses=True
        )[0]
    hyp = model.decoding.compute_rnnt_timestamps(hyp, timestamp_type="word")
    frame_s = model.encoder.subsampling_factor * 0.01
    return [
        (w["word"], round(w["start_offset"] * frame_s, 3), round(w["end_offset"] * frame_s, 3))
        for w in hyp.timestamp["word"]
    ]


@pytest.mark.parametrize("right_context", [0, 1, 6])
def test_final_word_times_equal_nemo_offline_word_offsets(
    make_engine, reference_model, right_context
):
    engine = make_engine(chunk_ms=CHUNK_FOR_R[right_context])
    for seed in (51, 52):
        audio = babble(2.4, seed=seed)
        stream = engine.open_stream()
        push_in_pieces(stream, audio, seed=seed)
        final = stream.finalize_sync(timeout=30)
        padded = np.zeros(engine.padded_length(len(audio)), np.float32)
        padded[: len(audio)] = audio
        expected = offline_words(reference_model, padded, right_context)
        got = [(w.word, w.start_s, w.end_s) for w in final.words]
        assert expected, "the tiny model should emit words (see conftest)"
        assert got == expected
        # The words are the final's text, in order, and their times move forward.
        assert " ".join(w.word for w in final.words) == final.text.strip()
        starts = [w.start_s for w in final.words]
        assert starts == sorted(starts) and all(w.end_s > w.start_s for w in final.words)
        # The last encoder frame may reach past the audio by less than one frame (80 ms).
        assert final.words[-1].end_s <= len(padded) / 16000 + 0.08
        stream.close()


def test_word_times_restart_with_each_utterance_and_partials_carry_none(make_engine):
    engine = make_engine(chunk_ms=160)
    partials = []
    stream = engine.open_stream(on_event=partials.append)
    audio = babble(2.0, seed=53)
    stream.push_audio(audio)
    first = stream.finalize_sync(timeout=30)
    stream.reset()
    stream.push_audio(audio)
    second = stream.finalize_sync(timeout=30)
    # Same audio after a reset: the same words at the same times on the new utterance's clock.
    assert second.utterance == 1 and second.words == first.words and first.words
    assert partials and all(p.words is None for p in partials)
