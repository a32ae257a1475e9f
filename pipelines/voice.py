"""Assembles the voice pipeline from settings: transport -> STT -> user turn -> LLM -> TTS -> out.

Nothing here is model-specific: backends come from :mod:`pipelines.registry` by the names the
config chose, so swapping the LLM or the TTS never touches this file.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMAssistantAggregatorParams,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.turns.user_stop import BaseUserTurnStopStrategy, SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from pipelines.barge_in import BargeIn, BargeInUserTurnStartStrategy, HeardSpeech
from pipelines.context_window import (
    ContextWindowGuard,
    context_budget,
    context_strategy,
    summarization_config,
)
from pipelines.latency import TurnLatencyObserver
from pipelines.registry import resolve
from pipelines.turns import SpeculativeTurnStopStrategy, TextAwareTurnStopStrategy
from services.vad.silero_pauses import PauseReportingSileroVAD

if TYPE_CHECKING:
    from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer

    from pipelines.settings import AgentSettings

# Audio enters at 16 kHz mono, the rate every ASR backend here is trained on.
INPUT_SAMPLE_RATE = 16000


@dataclass
class VoiceServices:
    """The three model-backed processors of one session."""

    stt: FrameProcessor
    llm: FrameProcessor
    tts: FrameProcessor


@dataclass
class VoicePipeline:
    """Everything one session runs: the pipeline, its context and its observers."""

    pipeline: Pipeline
    context: LLMContext
    services: VoiceServices
    latency: TurnLatencyObserver
    observers: list[BaseObserver] = field(default_factory=list)
    # Keeps every LLM request inside llm.n_ctx (pipelines/context_window.py).
    context_guard: ContextWindowGuard | None = None
    # Decide each turn end (pipelines/turns.py); the user aggregator runs them.
    user_aggregator: LLMUserAggregator | None = None
    turn_strategies: UserTurnStrategies | None = None
    assistant_aggregator: LLMAssistantAggregator | None = None
    # Barge-in (pipelines/barge_in.py): the bot holds its audio when the user speaks over it;
    # the transport's builder attaches the output track (agent/bot.py).
    barge_in: BargeIn | None = None
    heard_speech: HeardSpeech | None = None

    def create_worker(self, **kwargs: Any) -> PipelineWorker:
        """A worker with metrics on, RTVI for the browser client and the latency observer."""
        params = PipelineParams(
            enable_metrics=True,
            enable_usage_metrics=True,
            audio_in_sample_rate=INPUT_SAMPLE_RATE,
        )
        return PipelineWorker(
            self.pipeline,
            params=params,
            observers=[self.latency, *self.observers],
            **kwargs,
        )


async def _call_builder(capability: str, name: str, settings: AgentSettings) -> Any:
    builder = resolve(capability, name)
    result = builder(settings)
    if inspect.isawaitable(result):
        result = await result
    return result


async def build_services(settings: AgentSettings) -> VoiceServices:
    """Build STT, LLM and TTS from the registry by the names in settings."""
    stt = await _call_builder("stt", settings.stt.backend, settings)
    llm = await _call_builder("llm", settings.llm.preset, settings)
    tts = await _call_builder("tts", settings.tts.backend, settings)
    logger.info(
        f"Services: stt={settings.stt.backend} ({type(stt).__name__}), "
        f"llm={settings.llm.preset} ({type(llm).__name__}), "
        f"tts={settings.tts.backend} ({type(tts).__name__})"
    )
    return VoiceServices(stt=stt, llm=llm, tts=tts)


def build_barge_in(settings: AgentSettings) -> BargeIn:
    """The session's barge-in rules: ``turn.backchannels``, ``turn.backchannel_max_secs``."""
    return BargeIn(
        backchannels=settings.turn.backchannels,
        backchannel_max_secs=settings.turn.backchannel_max_secs,
    )


def build_turn_strategies(
    settings: AgentSettings, barge_in: BargeIn | None = None
) -> UserTurnStrategies:
    """Turn end by Smart Turn with the transcript's verdict, or by a fixed speech timeout.

    With ``turn.speculative`` the LLM answers the STT's eager end of turn at the VAD stop and
    the turn end decided here confirms (or drops) that answer. Turns start on the VAD (or a
    transcript); over the bot, barge-in decides (``pipelines/barge_in.py``).
    """
    turn = settings.turn
    start = [BargeInUserTurnStartStrategy(barge_in or build_barge_in(settings))]
    detector: BaseUserTurnStopStrategy
    if turn.strategy == "timeout":
        detector = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=turn.timeout_secs)
    else:
        detector = TextAwareTurnStopStrategy(
            turn_analyzer=build_smart_turn(settings),
            complete_text_wait_secs=turn.complete_text_wait_secs,
        )
    if not turn.speculative:
        return UserTurnStrategies(start=start, stop=[detector])
    # Unconfirmed for longer than the detector's longest wait (plus a slow final transcript):
    # the answer was for a turn that never ended as predicted.
    longest_wait = max(turn.incomplete_timeout_secs, turn.timeout_secs)
    return UserTurnStrategies(
        start=start,
        stop=[SpeculativeTurnStopStrategy(detector, speculation_timeout=longest_wait + 3.0)],
    )


def build_smart_turn(settings: AgentSettings) -> BaseTurnAnalyzer:
    """Smart Turn v3 (bundled CPU model); an incomplete turn ends after the configured silence."""
    from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

    params = SmartTurnParams(stop_secs=settings.turn.incomplete_timeout_secs)
    return LocalSmartTurnAnalyzerV3(params=params)


def build_vad(settings: AgentSettings) -> PauseReportingSileroVAD:
    """Silero VAD with the configured thresholds (stop_secs 0.2 by default).

    It also reports where each pause starts, for STTs that transcribe from there
    (``stt.early_transcript``).
    """
    vad = settings.vad
    return PauseReportingSileroVAD(
        params=VADParams(
            confidence=vad.confidence,
            start_secs=vad.start_secs,
            stop_secs=vad.stop_secs,
            min_volume=vad.min_volume,
        )
    )


async def build_voice_pipeline(
    settings: AgentSettings,
    *,
    transport_input: FrameProcessor | None = None,
    transport_output: FrameProcessor | None = None,
    services: VoiceServices | None = None,
    session_id: str | None = None,
) -> VoicePipeline:
    """Assemble one session's pipeline.

    Args:
        settings: Resolved settings.
        transport_input: ``transport.input()``; omitted in tests that feed frames directly.
        transport_output: ``transport.output()``; omitted likewise.
        services: Prebuilt services (tests); built from the registry when None.
        session_id: Names the session in the services' logs (e.g. an empty LLM reply).
    """
    services = services or await build_services(settings)
    if session_id and hasattr(services.llm, "session_id"):
        services.llm.session_id = session_id
    # The system prompt lives on the LLM service (system_instruction), as Pipecat 1.14 asks.
    context = LLMContext()
    budget = context_budget(settings)
    summarize = context_strategy(settings) == "summarize"
    barge_in = build_barge_in(settings)
    turn_strategies = build_turn_strategies(settings, barge_in)
    vad = build_vad(settings)
    if hasattr(services.stt, "on_speech_pause"):
        vad.add_pause_listener(services.stt)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            vad_analyzer=vad,
            user_turn_strategies=turn_strategies,
            # Pipecat's watchdog ends a silent turn after this: never before the turn
            # strategy's own longest wait.
            user_turn_stop_timeout=max(5.0, settings.turn.incomplete_timeout_secs + 2.0),
        ),
        assistant_params=LLMAssistantAggregatorParams(
            enable_auto_context_summarization=summarize,
            auto_context_summarization_config=summarization_config(budget),
        ),
    )
    # Every request fits llm.n_ctx: the summarizer keeps the conversation short, the guard
    # cuts what still does not fit (all of it with llm.context_strategy = "trim").
    guard = ContextWindowGuard(budget, context)
    guard.attach(aggregators.user())
    guard.attach(aggregators.assistant())  # it asks for a reply after a function call
    processors: list[FrameProcessor] = []
    if transport_input is not None:
        processors.append(transport_input)
    processors += [services.stt, aggregators.user(), services.llm, services.tts]
    # Barge-in: around the output, what the user heard of each reply (pipelines/barge_in.py).
    heard = HeardSpeech(context, barge_in)
    processors.append(heard.before_output())
    if transport_output is not None:
        processors.append(transport_output)
    processors += [heard.after_output(), aggregators.assistant(), heard.after_context()]
    return VoicePipeline(
        pipeline=Pipeline(processors),
        context=context,
        services=services,
        latency=TurnLatencyObserver(),
        context_guard=guard,
        user_aggregator=aggregators.user(),
        turn_strategies=turn_strategies,
        assistant_aggregator=aggregators.assistant(),
        barge_in=barge_in,
        heard_speech=heard,
    )
