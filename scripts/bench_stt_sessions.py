#!/usr/bin/env python
"""Many sessions in one bot process: the in-process Nemotron engine vs ``stt.engine_process``.

N ``NemotronSTTService`` sessions, each in its own Pipecat pipeline in this process (what
``voice-agent run`` does with N users), stream speech-like audio in real time (20 ms frames,
starts staggered) with a VAD stop every ``--turn-secs``. For each mode, same audio, same model,
same run:

- event-loop lag: how late a 10 ms sleep on the sessions' loop wakes (p50/p99/max);
- engine chunk latency: audio of a chunk complete -> its result, from the engine's own stats;
- time to final: VAD stop frame queued -> finalized ``TranscriptionFrame`` out of the service.

``in-process`` runs the engine's scheduler thread beside the sessions' loop (they share Python's
interpreter lock); ``engine-process`` runs it in a child process. The model is the tiny
random-weight one (``--model`` for another ``.nemo`` or hub id): compute per stream is small, so
this measures the plumbing, not the GPU.

Example:
  python scripts/bench_stt_sessions.py --sessions 32 --seconds 20 --out bench_results/stt_sessions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from services.asr.engine import EngineConfig, EngineProcess  # noqa: E402
from services.asr.nemotron_stt import NemotronSTTService  # noqa: E402
from tests.asr_server.tiny import chunks, speechlike_pcm  # noqa: E402

FRAME_S = 0.02
MODES = ("in-process", "engine-process")


class FinalTimes(FrameProcessor):
    """End of a session's pipeline: notes when each finalized transcript comes out."""

    def __init__(self) -> None:
        super().__init__(enable_direct_mode=True)
        self.finals: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and frame.finalized:
            self.finals.append(time.monotonic())
        await self.push_frame(frame, direction)


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        asked = time.monotonic()
        await asyncio.sleep(0.01)
        samples.append(time.monotonic() - asked - 0.01)


async def run_session(
    index: int, worker: PipelineWorker, sink: FinalTimes, args, t0: float, stops: list[float]
) -> None:
    """Stream ``args.seconds`` of audio on the shared clock, with a VAD stop every turn."""
    pcm = speechlike_pcm(args.turn_secs - args.pause_secs, seed=index)
    frames = [
        InputAudioRawFrame(audio=piece, sample_rate=16000, num_channels=1)
        for piece in chunks(pcm, 20)
    ]
    pause = [InputAudioRawFrame(audio=bytes(640), sample_rate=16000, num_channels=1)] * round(
        args.pause_secs / FRAME_S
    )
    start = t0 + (index / args.sessions) * FRAME_S
    sent = 0
    while sent * FRAME_S < args.seconds:
        await worker.queue_frame(VADUserStartedSpeakingFrame())
        for frame in [*frames, None, *pause]:
            if frame is None:  # the speech is over: the VAD says so (its stop_secs later)
                stops.append(time.monotonic())
                await worker.queue_frame(VADUserStoppedSpeakingFrame(stop_secs=0.2))
                # The turn ends there (as a user aggregator would say): the next one is new.
                await worker.queue_frame(UserStoppedSpeakingFrame())
                continue
            await asyncio.sleep(max(0.0, start + sent * FRAME_S - time.monotonic()))
            await worker.queue_frame(frame)
            sent += 1


async def run_mode(mode: str, args, model: str) -> dict:
    config = EngineConfig(
        model=model, device="cpu", dtype="fp32", chunk_ms=160, max_streams=args.sessions + 8
    )
    engine_process = mode == "engine-process"
    workers, sinks, services = [], [], []
    shared_engine = None
    if not engine_process:
        from services.asr.engine import get_engine

        shared_engine = await asyncio.to_thread(get_engine, config)
    for _ in range(args.sessions):
        stt = NemotronSTTService(
            engine=shared_engine,
            engine_config=config,
            engine_process=engine_process,
            reset_after_secs=None,
        )
        sink = FinalTimes()
        worker = PipelineWorker(
            Pipeline([stt, sink]), params=PipelineParams(), cancel_on_idle_timeout=False
        )
        services.append(stt)
        sinks.append(sink)
        workers.append(worker)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    running = asyncio.create_task(runner.run())
    print(f"[{mode}] starting {args.sessions} sessions (the engine loads first)...", flush=True)
    deadline = time.monotonic() + 300
    while not all(s._stream is not None for s in services):
        if time.monotonic() > deadline or running.done():
            raise RuntimeError(f"{mode}: sessions did not start")
        await asyncio.sleep(0.1)
    engine = services[0].engine
    lags: list[float] = []
    stop = asyncio.Event()
    lagger = asyncio.create_task(loop_lag(lags, stop))
    stops: list[list[float]] = [[] for _ in workers]
    t0 = time.monotonic() + 0.5
    print(f"[{mode}] streaming {args.seconds:.0f} s x {args.sessions} sessions...", flush=True)
    await asyncio.gather(
        *(
            run_session(i, w, s, args, t0, stops[i])
            for i, (w, s) in enumerate(zip(workers, sinks, strict=True))
        )
    )
    await asyncio.sleep(2.0)  # the last finals
    stats = engine.stats()
    stop.set()
    await lagger
    for worker in workers:
        await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 60)
    if isinstance(engine, EngineProcess):
        await engine.aclose()
    else:
        engine.shutdown()
    ttf = []
    for asked, sink in zip(stops, sinks, strict=True):
        # Each final answers the latest VAD stop before it.
        for done in sink.finals:
            before = [t for t in asked if t <= done]
            if before:
                ttf.append(done - before[-1])
    return {
        "mode": mode,
        "loop_lag_ms": summarize([x * 1000 for x in lags]),
        "time_to_final_ms": summarize([x * 1000 for x in ttf]),
        "finals": len(ttf),
        "finals_pushed": sum(s.finals_pushed for s in services),
        "finals_discarded": sum(s.finals_discarded for s in services),
        "vad_stops": sum(len(s) for s in stops),
        "engine_chunk_latency_ms": stats.get("chunk_latency_ms"),
        "engine_step_latency_ms": stats.get("step_latency_ms"),
        "engine_pid": stats.get("engine_pid", os.getpid()),
    }


def summarize(values: list[float]) -> dict:
    if not values:
        return {}
    data = sorted(values)

    def pct(p: float) -> float:
        return round(data[min(len(data) - 1, int(p / 100 * len(data)))], 2)

    return {
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(data[-1], 2),
        "mean": round(statistics.fmean(data), 2),
        "n": len(data),
    }


def table(results: list[dict]) -> str:
    rows = [
        "| mode | loop lag p50/p99/max ms | engine chunk latency p50/p99 ms "
        "| time to final p50/p99 ms | finals / VAD stops |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lag, ttf = r["loop_lag_ms"], r["time_to_final_ms"]
        chunk = {k: round(v, 1) for k, v in (r["engine_chunk_latency_ms"] or {}).items()}
        rows.append(
            f"| {r['mode']} | {lag.get('p50')}/{lag.get('p99')}/{lag.get('max')} "
            f"| {chunk.get('p50')}/{chunk.get('p99')} | {ttf.get('p50')}/{ttf.get('p99')} "
            f"| {r['finals']} / {r['vad_stops']} |"
        )
    return "\n".join(rows)


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG")
        return
    metrics = [
        ("loop_lag_ms", "event-loop lag"),
        ("engine_chunk_latency_ms", "engine chunk latency"),
        ("time_to_final_ms", "time to final"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(12, 3.5))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for offset, r in enumerate(results):
            stats = r[key] or {}
            values = [stats.get("p50", 0), stats.get("p99", 0)]
            ax.bar([x + offset * 0.4 for x in (0, 1)], values, width=0.4, label=r["mode"])
        ax.set_xticks([0.2, 1.2], ["p50", "p99"])
        ax.set_title(f"{title} (ms)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--turn-secs", type=float, default=3.0)
    parser.add_argument("--pause-secs", type=float, default=0.6)
    parser.add_argument("--model", help="a .nemo or hub id (default: the tiny test model)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "stt_sessions")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # Pipecat's per-frame debug lines would cost both modes CPU
    logger.add(sys.stderr, level="WARNING")
    if args.model:
        model = args.model
    else:
        from loadtest_asr import tiny_model_path  # beside this script: its cached tiny model

        model = str(tiny_model_path())
    args.out.mkdir(parents=True, exist_ok=True)
    results = [asyncio.run(run_mode(mode, args, model)) for mode in args.modes.split(",")]
    meta = {
        "sessions": args.sessions,
        "seconds": args.seconds,
        "model": model,
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    plot(results, args.out / "stt_sessions.png")
    print(text)
    print(f"wrote {args.out}/results.json, table.md, stt_sessions.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
