"""Magpie TTS in-process: the real NeMo MagpieTTSModel (tiny, random weights) behind the service.

Covers the model's own output rate, per-sentence dispatch (the first sentence or clause goes to
the model before the reply is complete), interruption (generation stops within a decoder step,
stale audio is dropped, the session carries on), sharing one model between sessions, the CFG
option, the TTFB metric, and bad input.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.tests.utils import SleepFrame, run_test

from services.tts.magpie import MagpieTTSService
from services.tts.magpie_engine import MagpieEngine, get_magpie_engine, speaker_index
from services.tts.speakable import speakable_transforms
from tests.tts.llm_frames import reply

pytestmark = pytest.mark.timeout(300)


def audio_of(frames) -> list[TTSAudioRawFrame]:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


class Stamp(FrameProcessor):
    """Records when each text frame (and interruption) passes, on the event loop clock."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, float] = {}

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self.seen[frame.text] = time.monotonic()
        elif isinstance(frame, InterruptionFrame):
            self.seen["<interruption>"] = time.monotonic()
        await self.push_frame(frame, direction)


@pytest.fixture
def synth_log(tiny_magpie_engine, monkeypatch):
    """Spy on the worker thread: (text, start, end) of each synthesis, and peak concurrency."""
    log: dict = {"calls": [], "active": 0, "peak": 0, "kwargs": []}
    lock = threading.Lock()
    original = tiny_magpie_engine._synthesize_blocking

    def spy(text, language, speaker, cfg_scale, cancel):
        with lock:
            log["active"] += 1
            log["peak"] = max(log["peak"], log["active"])
        started = time.monotonic()
        log["kwargs"].append({"language": language, "speaker": speaker, "cfg_scale": cfg_scale})
        try:
            return original(text, language, speaker, cfg_scale, cancel)
        finally:
            with lock:
                log["active"] -= 1
            log["calls"].append((text, started, time.monotonic()))

    monkeypatch.setattr(tiny_magpie_engine, "_synthesize_blocking", spy)
    return log


def make_service(path: str, **kwargs) -> MagpieTTSService:
    settings = MagpieTTSService.Settings(voice="Aria", language="en", cfg_scale=1.0)
    return MagpieTTSService(
        model=path,
        device="cpu",
        settings=settings,
        text_transforms=speakable_transforms(),
        **kwargs,
    )


async def test_engine_speaks_at_the_models_own_rate(tiny_magpie_engine):
    await tiny_magpie_engine.load()
    assert tiny_magpie_engine.sample_rate == 22050
    assert tiny_magpie_engine.num_speakers == 5
    result = await tiny_magpie_engine.synthesize("Hello there.", cfg_scale=1.0)
    assert result.sample_rate == 22050
    assert result.audio.dtype.name == "float32"
    assert len(result.audio) > 0 and len(result.audio) % 1024 == 0


async def test_service_streams_sentences_at_22050(tiny_magpie_path, synth_log):
    tts = make_service(tiny_magpie_path)
    down, up = await run_test(tts, frames_to_send=reply("Hello there. ", "How are you today?"))
    audio = audio_of(down)
    assert audio, [type(f).__name__ for f in down]
    assert {f.sample_rate for f in audio} == {22050}
    assert {f.num_channels for f in audio} == {1}
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    # One synthesis per sentence, in order.
    assert [c[0].strip() for c in synth_log["calls"]] == ["Hello there.", "How are you today?"]
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]
    spoken = " ".join(f.text for f in down if isinstance(f, TTSTextFrame))
    assert "Hello there." in spoken and "How are you today?" in spoken


async def test_first_sentence_is_synthesized_before_the_reply_is_complete(
    tiny_magpie_path, synth_log
):
    stamp = Stamp()
    tts = make_service(tiny_magpie_path)
    await run_test(
        Pipeline([stamp, tts]),
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("Sure thing. I"),
            SleepFrame(sleep=2.0),
            LLMTextFrame(" can help with that."),
            LLMFullResponseEndFrame(),
        ],
    )
    first_text, first_start, _ = synth_log["calls"][0]
    assert first_text.strip() == "Sure thing."
    # The model was already working on sentence one while the LLM was still "writing".
    assert first_start < stamp.seen[" can help with that."]


async def test_long_first_sentence_is_cut_at_a_clause(tiny_magpie_path, synth_log):
    tts = make_service(tiny_magpie_path)
    await run_test(
        tts,
        frames_to_send=reply(
            "The weather in Paris today is sunny and warm, with a light breeze ",
            "from the west. It will rain tomorrow, they say.",
        ),
    )
    texts = [c[0].strip() for c in synth_log["calls"]]
    assert texts[0] == "The weather in Paris today is sunny and warm,"
    assert texts[1] == "with a light breeze from the west."
    # Only the first sentence of a reply is cut.
    assert texts[2] == "It will rain tomorrow, they say."


async def test_text_is_made_speakable_before_synthesis(tiny_magpie_path, synth_log):
    tts = make_service(tiny_magpie_path)
    down, _ = await run_test(tts, frames_to_send=reply("It costs **$5** 😀. "))
    assert synth_log["calls"][0][0].strip() == "It costs five dollars."
    # The context keeps what the LLM wrote.
    assert "$5" in " ".join(f.text for f in down if isinstance(f, TTSTextFrame))


async def test_interruption_stops_generation_and_drops_stale_audio(tiny_magpie_path):
    engine = MagpieEngine(tiny_magpie_path, "cpu")
    await engine.load()
    steps = {"n": 0, "slow": False}

    def count_step(module, args):
        steps["n"] += 1
        if steps["slow"]:
            time.sleep(0.025)  # a "long" sentence takes over 10 s: only an interruption ends it

    engine._model.decoder.register_forward_pre_hook(count_step)
    params = engine._model.inference_parameters
    original = engine._synthesize_blocking
    runs: list[dict] = []

    def synthesize(text, language, speaker, cfg_scale, cancel):
        # "long" sentences take 400 slowed decoder steps: only an interruption ends them early.
        long = "long" in text
        steps["slow"] = long
        params.max_decoder_steps = 400 if long else 8
        params.min_generated_frames = 400 if long else 4
        run = {"text": text, "start_steps": steps["n"], "cancelled": False}
        runs.append(run)
        try:
            return original(text, language, speaker, cfg_scale, cancel)
        except Exception:
            run["cancelled"] = True
            raise
        finally:
            run["end"] = time.monotonic()
            run["steps"] = steps["n"] - run["start_steps"]

    engine._synthesize_blocking = synthesize
    stamp = Stamp()
    tts = make_service(tiny_magpie_path, engine=engine)
    down, up = await run_test(
        Pipeline([stamp, tts]),
        frames_to_send=[
            LLMFullResponseStartFrame(),
            LLMTextFrame("Short one. This long sentence is never finished. "),
            LLMTextFrame("Nor is this one spoken."),
            SleepFrame(sleep=3.0),
            InterruptionFrame(),
            SleepFrame(sleep=0.5),
            *reply("Fresh start."),
        ],
    )
    engine.shutdown()
    by_text = {r["text"].strip(): r for r in runs}
    interrupted = by_text["This long sentence is never finished."]
    assert interrupted["cancelled"]
    assert 0 < interrupted["steps"] < 400
    # The worker stopped within a step or two of the interruption.
    assert interrupted["end"] - stamp.seen["<interruption>"] < 2.0
    # The queued sentence of the interrupted reply was never synthesized; the next reply was.
    assert "Nor is this one spoken." not in by_text
    assert "Fresh start." in by_text
    # After the interruption, only the fresh reply's audio comes out.
    index = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    after = audio_of(down[index:])
    before = audio_of(down[:index])
    assert after, "the session carries on and speaks the next reply"
    assert {f.context_id for f in after}.isdisjoint({f.context_id for f in before})
    assert not [f for f in up if isinstance(f, ErrorFrame)]


async def test_speak_frame_is_spoken(tiny_magpie_path, synth_log):
    tts = make_service(tiny_magpie_path)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame("Hi, I am your assistant.")])
    assert audio_of(down)
    assert [c[0].strip() for c in synth_log["calls"]] == ["Hi, I am your assistant."]


async def test_sessions_share_one_model_safely(tiny_magpie_path, synth_log):
    a, b = make_service(tiny_magpie_path), make_service(tiny_magpie_path)
    assert a.engine is b.engine is get_magpie_engine(tiny_magpie_path, "cpu")
    (down_a, _), (down_b, _) = await asyncio.gather(
        run_test(a, frames_to_send=reply("First session speaks. ", "Twice.")),
        run_test(b, frames_to_send=reply("Second session speaks. ", "Also twice.")),
    )
    assert audio_of(down_a) and audio_of(down_b)
    assert len(synth_log["calls"]) == 4
    assert synth_log["peak"] == 1  # the model is only ever used by one thread at a time


async def test_voice_language_and_cfg_come_from_settings(tiny_magpie_path, synth_log):
    settings = MagpieTTSService.Settings(voice="Leo", language="es", cfg_scale=1.0)
    tts = MagpieTTSService(model=tiny_magpie_path, device="cpu", settings=settings)
    await run_test(tts, frames_to_send=reply("Hola."))
    assert synth_log["kwargs"][0] == {"language": "es", "speaker": 4, "cfg_scale": 1.0}


async def test_cfg_scale_is_applied_per_request_and_restored(tiny_magpie_engine):
    await tiny_magpie_engine.load()
    model = tiny_magpie_engine._model
    default = model.inference_parameters.cfg_scale
    seen = []
    original = model.do_tts

    def do_tts(*args, **kwargs):
        seen.append((kwargs["use_cfg"], model.inference_parameters.cfg_scale))
        return original(*args, **kwargs)

    model.do_tts = do_tts
    try:
        await tiny_magpie_engine.synthesize("One.", cfg_scale=1.0)
        await tiny_magpie_engine.synthesize("Two.", cfg_scale=3.0)
        await tiny_magpie_engine.synthesize("Three.", cfg_scale=None)
    finally:
        del model.do_tts
    assert seen == [(False, 1.0), (True, 3.0), (True, default)]
    assert model.inference_parameters.cfg_scale == default


async def test_ttfb_metric_is_reported(tiny_magpie_path):
    tts = make_service(tiny_magpie_path)
    down, _ = await run_test(
        tts,
        frames_to_send=reply("Measure me."),
        pipeline_params=PipelineParams(enable_metrics=True),
    )
    ttfb = [
        d.value
        for f in down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, TTFBMetricsData) and d.processor == tts.name and d.value > 0
    ]
    # Pipecat reports zeroed metrics at start; the one measured reply follows.
    assert len(ttfb) == 1
    print(f"Magpie tiny CPU TTFB: {ttfb[0] * 1000:.0f} ms")


async def test_output_rate_can_be_overridden(tiny_magpie_path):
    tts = make_service(tiny_magpie_path, sample_rate=16000)
    down, _ = await run_test(tts, frames_to_send=reply("Resample me."))
    audio = audio_of(down)
    assert audio and {f.sample_rate for f in audio} == {16000}


async def test_unknown_speaker_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Magpie speaker 'Bob'"):
        speaker_index("Bob")
    assert speaker_index("Magpie-Multilingual.EN-US.Jason") == 3
    with pytest.raises(ValueError, match="out of range"):
        speaker_index(7, num_speakers=5)


async def test_missing_model_reports_an_error_and_the_session_runs_on(tmp_path):
    tts = MagpieTTSService(model=str(tmp_path / "nope.nemo"), device="cpu")
    down, up = await run_test(tts, frames_to_send=reply("Anyone there?"))
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "nope.nemo" in errors[0].error
    assert not audio_of(down)
