"""The bot entry point the Pipecat runner calls once per session.

The CLI resolves settings once per process (:func:`configure`); every session then builds its own
pipeline from them. Model-heavy backends share one loaded model per process (see their services).
"""

from __future__ import annotations

from loguru import logger
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from agent import telephony
from agent.config import AgentSettings, load_config
from pipelines.room_events import room_rtvi_processor
from pipelines.voice import INPUT_SAMPLE_RATE, build_voice_pipeline

_settings: AgentSettings | None = None


def configure(settings: AgentSettings) -> None:
    """Set the settings every session of this process uses."""
    global _settings
    _settings = settings


def current_settings() -> AgentSettings:
    """The process settings; resolved from the environment if the CLI did not set them."""
    global _settings
    if _settings is None:
        _settings = load_config().settings
    return _settings


def _transport_params() -> dict:
    def audio_params(cls=TransportParams, **extra):
        return lambda: cls(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=INPUT_SAMPLE_RATE,
            **extra,
        )

    params = {"webrtc": audio_params()}
    try:
        from pipecat.transports.daily.transport import DailyParams

        params["daily"] = audio_params(DailyParams)
    except ImportError:  # daily-python missing: only WebRTC is offered
        pass
    return params


def session_label(runner_args: RunnerArguments) -> str | None:
    """The id that names this session in the logs: the runner's, else the WebRTC peer's."""
    if runner_args.session_id:
        return runner_args.session_id
    connection = getattr(runner_args, "webrtc_connection", None)
    return getattr(connection, "pc_id", None)


async def bot(runner_args: RunnerArguments) -> None:
    """Run one voice session on the transport the runner created for it."""
    settings = current_settings()
    if telephony.is_call(runner_args):
        # A phone call on the runner's /ws: Pipecat's serializer, hang-up only if configured.
        transport = await telephony.create_call_transport(runner_args, settings.transport.type)
        if transport is None:
            return
    else:
        transport = await create_transport(runner_args, _transport_params())
    voice = await build_voice_pipeline(
        settings,
        transport_input=transport.input(),
        transport_output=transport.output(),
        session_id=session_label(runner_args),
    )
    # The room page names the models in use: RTVI's bot-ready carries them (room_events.py).
    worker = voice.create_worker(rtvi_processor=room_rtvi_processor(settings, voice.services))
    _attach_barge_in(voice, runner_args, transport)
    _report_turn_ends(voice, worker)

    @voice.latency.event_handler("on_turn_latency")
    async def _on_turn_latency(_observer, turn):
        # The room page shows each turn's latency; RTVI carries it as a server message.
        await worker.rtvi.send_server_message(
            {
                "type": "turn-latency",
                "total_secs": turn.total_secs,
                "parts": turn.parts,
                "hidden": turn.hidden,
                "user_stopped_at": turn.user_stopped_at,
                "user_last_voice_at": turn.user_last_voice_at,
            }
        )

    @transport.event_handler("on_client_disconnected")
    async def _on_client_disconnected(_transport, _client):
        logger.info("Client disconnected: ending the session")
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=runner_args.handle_sigint)
    await runner.run(worker)


# --- Barge-in and turn reports (pipelines/barge_in.py, pipelines/turns.py) ---------------------


def _attach_barge_in(voice, runner_args: RunnerArguments, transport=None) -> None:
    """Let barge-in pause, resume and flush the output: the WebRTC track, or a call's output."""
    from agent.call_output import PausableCallOutput
    from agent.webrtc_tuning import output_track_of

    if voice.barge_in is None:
        return
    connection = getattr(runner_args, "webrtc_connection", None)
    if connection is not None:
        voice.barge_in.attach_output(lambda: output_track_of(connection))
        return
    output = transport.output() if transport is not None else None
    if isinstance(output, PausableCallOutput):
        voice.barge_in.attach_output(lambda: output)


def _report_turn_ends(voice, worker) -> None:
    """Send each turn end's rule and the session's counters as an RTVI ``turn-end`` message.

    Clients (``scripts/bench_v2v.py``) count which rule ended each turn, how many speculative
    answers were kept, and what barge-in decided, without reading the agent's log.
    """
    stop = (voice.turn_strategies.stop or [None])[0] if voice.turn_strategies else None
    detector = getattr(stop, "detector", stop)
    last: dict = {}
    if detector is not None and hasattr(detector, "decisions"):

        @detector.event_handler("on_turn_decision")
        def _on_decision(_detector, decision):
            last.update(rule=decision.rule, reason=decision.reason, silence=decision.silence_secs)

    @voice.user_aggregator.event_handler("on_user_turn_stopped")
    async def _on_turn_stopped(_aggregator, _strategy, _message):
        decision, barge_in = dict(last), voice.barge_in
        last.clear()
        await worker.rtvi.send_server_message(
            {
                "type": "turn-end",
                "rule": decision.get("rule"),
                "reason": decision.get("reason"),
                "silence_secs": decision.get("silence"),
                "decisions": dict(getattr(detector, "decisions", {}) or {}),
                "speculations": getattr(stop, "speculations", None),
                "speculations_kept": getattr(stop, "speculations_kept", None),
                "barge_in": None
                if barge_in is None
                else {
                    "interruptions": barge_in.interruptions,
                    "backchannels": barge_in.backchannels_heard,
                    "false_alarms": barge_in.false_alarms,
                },
            }
        )
