#!/usr/bin/env python
"""Failover of remote STT sessions when the ASR server under them is killed: time and lost words.

Two ``voice-agent asr-server`` processes on the tiny random-weight model sit behind a TCP proxy
(the load balancer: round robin, skipping upstreams that refuse; tests/support/tcp_proxy.py).
``--sessions`` RemoteNemotronSTTService sessions (each in its own Pipecat pipeline, in this
process) connect through it, so half land on server A and half on B. Every session speaks the
same three utterances of real recorded speech at real-time pace, one turn each. In the middle
of utterance 2, server A is killed with SIGKILL: its sessions see the TCP connection drop (1006)
and fail over through the proxy to B. The sessions that stayed on B are the no-failure run of the
same audio.

Reported per failed-over session and summarized:
- cut -> drop noticed, cut -> reconnected, cut -> first partial on the survivor (target <= 2.5 s);
- seconds replayed; lost words (reference words missing from its finals, target 0) and whether
  its three finals equal the reference exactly;
- errors seen by the sessions that stayed on B (should be none).

``--in-process`` runs both servers in this process on one engine instead (fast, for a smoke run;
the kill is then a cut at the proxy plus a stop whose goodbye reaches no one).

Example:
  python scripts/bench_failover.py --sessions 4 --out bench_results/failover
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import signal
import statistics
import sys
import time
import wave
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("LOGURU_LEVEL", "INFO")  # before loguru is imported: no frame-level noise

from loadtest_asr import ServerProcess, hardware, tiny_model_path  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

from services.asr.remote_stt import RemoteNemotronSTTService  # noqa: E402
from services.asr.server.protocol import BYTES_PER_SECOND  # noqa: E402
from tests.e2e.speech import load_utterances  # noqa: E402
from tests.stt.harness import LivePipeline  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402

SILENCE = bytes(int(0.3 * BYTES_PER_SECOND))
TARGET_FIRST_PARTIAL_S = 2.5


def pick_speech(count: int = 3) -> tuple[list[bytes], list[str]]:
    """``count`` real recorded utterances (Asterisk prompts of 1.8-2.6 s)."""
    found = sorted(
        (
            u
            for u in load_utterances()
            if u.id.startswith("asterisk/") and 1.8 <= u.duration_s <= 2.6
        ),
        key=lambda u: u.id,
    )[:count]
    if len(found) < count:
        raise SystemExit("no real speech cached: run scripts/fetch_speech.py")
    pcm = []
    for u in found:
        with wave.open(str(u.path)) as w:
            pcm.append(w.readframes(w.getnframes()))
    return pcm, [u.id for u in found]


class Session:
    """One bot session: a service in a live pipeline, and what it saw."""

    def __init__(self, index: int, url: str) -> None:
        self.index = index
        self.stt = RemoteNemotronSTTService(url=url)
        self.live = LivePipeline([self.stt])
        self.upstream: tuple[str, int] | None = None

    def finals(self) -> list[str]:
        return [f.result.text for f in self.live.of(TranscriptionFrame)]

    def first_interim_after(self, wall: float) -> float | None:
        """Wall-clock time of the first interim frame pushed after ``wall`` (ms precision)."""
        times = [
            datetime.fromisoformat(f.timestamp).timestamp()
            for f in self.live.of(InterimTranscriptionFrame)
        ]
        later = [t for t in times if t > wall]
        return min(later) if later else None


async def speak(session: Session, speech: list[bytes], cut: asyncio.Event, halfway: asyncio.Event):
    live = session.live
    for i, pcm in enumerate(speech):
        await live.send(VADUserStartedSpeakingFrame())
        half = len(pcm) // 2 & ~1
        await live.send_audio(pcm[:half], speed=1.0)
        if i == 1:
            halfway.set()
            await cut.wait()  # the kill lands here, then the speech goes on
        await live.send_audio(pcm[half:], speed=1.0)
        await live.send_audio(SILENCE, speed=1.0)
        await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
        await live.wait_for(lambda i=i: len(live.of(TranscriptionFrame)) >= i + 1, 20)
        await live.send(UserStoppedSpeakingFrame())


def lost_words(reference: list[str], got: list[str]) -> int:
    ref = " ".join(reference).split()
    hyp = " ".join(got).split()
    matcher = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
    return len(ref) - sum(block.size for block in matcher.get_matching_blocks())


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    speech, ids = pick_speech()
    servers: list[Any] = []
    engine = None
    if args.in_process:
        from services.asr.server import ASRServer, ServerConfig
        from tests.asr_server.tiny import open_tiny_engine

        engine = open_tiny_engine(tiny_model_path())
        for _ in range(2):
            server = ASRServer(engine, ServerConfig(host="127.0.0.1", port=0, idle_timeout=0))
            await server.start()
            servers.append(server)
    else:
        model = str(tiny_model_path())
        for name in ("a", "b"):
            server = ServerProcess(model, torch_threads=1, log_path=out / f"server_{name}.log")
            server.args.append("--in-process")  # one process: SIGKILL takes the engine too
            servers.append(server)
        print("starting two asr-server processes on the tiny model ...", flush=True)
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
    upstreams = [("127.0.0.1", s.port) for s in servers]
    proxy = TcpProxy(upstreams)
    await proxy.start()
    sessions = [Session(i, proxy.url()) for i in range(args.sessions)]
    cut = asyncio.Event()
    cut_at = cut_wall = 0.0
    try:
        for s in sessions:
            await s.live.__aenter__()
            await s.live.wait_for(lambda s=s: s.stt.connected, 10)
            s.upstream = proxy.routed[-1]
        halfway = [asyncio.Event() for _ in sessions]
        talks = [
            asyncio.create_task(speak(s, speech, cut, h))
            for s, h in zip(sessions, halfway, strict=True)
        ]
        await asyncio.gather(*(h.wait() for h in halfway))
        cut_at, cut_wall = time.monotonic(), time.time()
        if args.in_process:
            proxy.cut(upstreams[0])
            await servers[0].stop()
        else:
            servers[0].proc.send_signal(signal.SIGKILL)
        cut.set()
        await asyncio.gather(*talks)
        await asyncio.sleep(0.5)
    finally:
        for s in sessions:
            await s.live.__aexit__(None, None, None)
        await proxy.stop()
        for server in servers:
            if args.in_process:
                await server.stop()
            else:
                await asyncio.to_thread(server.stop)
        if engine is not None:
            engine.shutdown()

    stayed = [s for s in sessions if s.upstream == upstreams[1]]
    moved = [s for s in sessions if s.upstream == upstreams[0]]
    reference = stayed[0].finals() if stayed else []
    rows = []
    for s in moved:
        record = s.stt.failover_log[0] if s.stt.failover_log else None

        def since_cut(moment: float | None) -> float | None:
            return None if moment is None else round(moment - cut_at, 3)

        def wall_since_cut(moment: float | None) -> float | None:
            return None if moment is None else round(moment - cut_wall, 3)

        rows.append(
            {
                "session": s.index,
                "failovers": s.stt.failovers,
                "cause": record.cause if record else None,
                "detect_s": since_cut(record.lost_at if record else None),
                "reconnect_s": since_cut(record.reconnected_at if record else None),
                "first_partial_s": since_cut(record.first_partial_at if record else None),
                "caught_up_s": since_cut(record.caught_up_at if record else None),
                "first_interim_frame_s": wall_since_cut(s.first_interim_after(cut_wall)),
                "replayed_s": round(record.replayed_s + record.buffered_s, 3) if record else 0.0,
                "finals": len(s.finals()),
                "finals_equal_reference": s.finals() == reference,
                "lost_words": lost_words(reference, s.finals()),
                "errors": [e.error for e in s.live.of(ErrorFrame, up=True)],
            }
        )
    first = [r["first_partial_s"] for r in rows if r["first_partial_s"] is not None]
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "hardware": hardware(),
        "config": {
            "sessions": args.sessions,
            "servers": "in-process" if args.in_process else "asr-server processes (SIGKILL)",
            "model": "tiny random-weight (loadtest_asr.tiny_model_path)",
            "speech": ids,
            "pace": "real time",
        },
        "reference_finals": len(reference),
        "stayed_sessions": len(stayed),
        "stayed_errors": sum(len(s.live.of(ErrorFrame, up=True)) for s in stayed),
        "stayed_equal_reference": all(s.finals() == reference for s in stayed),
        "moved": rows,
        "summary": {
            "first_partial_s_max": max(first) if first else None,
            "first_partial_s_median": statistics.median(first) if first else None,
            "lost_words_total": sum(r["lost_words"] for r in rows),
            "all_finals_equal": all(r["finals_equal_reference"] for r in rows),
            "target_first_partial_s": TARGET_FIRST_PARTIAL_S,
        },
    }


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'session':>7} {'detect':>7} {'reconn':>7} {'1st partial':>11} {'1st frame':>9} "
        f"{'replayed':>8} {'finals':>6} {'equal':>5} {'lost':>4}"
    )
    rows = [head, "-" * len(head)]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    for r in report["moved"]:
        rows.append(
            f"{r['session']:>7} {fmt(r['detect_s']):>7} {fmt(r['reconnect_s']):>7} "
            f"{fmt(r['first_partial_s']):>11} {fmt(r['first_interim_frame_s']):>9} "
            f"{fmt(r['replayed_s']):>8} {r['finals']:>6} "
            f"{'yes' if r['finals_equal_reference'] else 'NO':>5} {r['lost_words']:>4}"
        )
    s = report["summary"]
    rows.append(
        f"\nfirst partial after the cut: max {fmt(s['first_partial_s_max'])} (target <= "
        f"{TARGET_FIRST_PARTIAL_S} s); lost words {s['lost_words_total']}; all finals equal: "
        f"{s['all_finals_equal']}; sessions that stayed: {report['stayed_sessions']}, errors "
        f"{report['stayed_errors']}"
    )
    return "\n".join(rows)


def write_png(report: dict[str, Any], path: Path) -> Path | None:
    """Per failed-over session: cut -> noticed, reconnected, first partial, first frame."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
        return None
    rows = report["moved"]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.5 * len(rows)))
    keys = [
        ("detect_s", "drop noticed"),
        ("reconnect_s", "reconnected"),
        ("first_partial_s", "first partial"),
        ("first_interim_frame_s", "first interim frame"),
    ]
    for j, (key, label) in enumerate(keys):
        ax.scatter(
            [r[key] or 0 for r in rows],
            [r["session"] for r in rows],
            label=label,
            color=f"C{j}",
            zorder=3,
        )
    ax.axvline(TARGET_FIRST_PARTIAL_S, color="red", ls="--", label="target")
    ax.set_xlabel("seconds after the server was killed")
    ax.set_ylabel("session")
    ax.set_title("failover through the proxy to the surviving ASR server")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4, help="sessions, split over 2 servers")
    parser.add_argument("--in-process", action="store_true", help="servers in this process")
    parser.add_argument("--out", default="bench_results/failover", help="output folder")
    args = parser.parse_args(argv)
    if args.sessions < 2:
        parser.error("--sessions must be >= 2 (one on each server)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(run(args, out))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    png = write_png(report, out / "failover.png")
    print()
    print(table(report))
    print(f"\nreport: {out / 'report.json'}" + (f", plot: {png}" if png else ""))
    s = report["summary"]
    ok = (
        s["lost_words_total"] == 0
        and s["all_finals_equal"]
        and (s["first_partial_s_max"] or 99) <= TARGET_FIRST_PARTIAL_S
        and report["stayed_errors"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
