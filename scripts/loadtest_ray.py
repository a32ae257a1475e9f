#!/usr/bin/env python3
"""What Ray Serve costs: the largest N with no drift through Ray next to the plain ASR server.

In one run, with the same engine settings, it starts each target in turn on a free loopback
port, ramps N with ``loadtest_asr``'s ``--find-max`` (doubling, then bisecting; a failed trial
restarts the target), and stops it before the next:

- ``asr-server``: ``voice-agent asr-server`` (engine in its own process);
- ``ray-1``: ``voice-agent asr-cluster --replicas 1`` (a local Ray, HAProxy ingress, the
  engine in its own process inside the replica), and ``ray-2`` etc. with ``--ray-replicas 1,2``.

The issue's targets: ray-1 holds >= 90% of asr-server's N (the Ray path costs <= 10%), and two
replicas on a machine's shared cores hold no fewer than one. Writes ``report.json`` (every
trial, the hardware), ``lag.png`` (p99 lag against N per target) and prints a table.

On shared vCPUs one search per target is noisy (the same target's N moved by +-30% between
runs here), and the host's load drifts over a run. ``--rounds R`` repeats the whole comparison
R times, in ABBA order (asr-server, ray-1, ray-1, asr-server, ...), so a drift in the host's
speed weighs on both sides alike; each target's N is then the median over its rounds, and the
share is that median against asr-server's (each round's own share is listed too).

``--cpu-at N`` measures cost instead of capacity: each target serves N streams for one trial,
and the CPU time of its whole process tree (front end, engine, HAProxy, Ray's daemons) is read
from ``/proc`` over the trial's steady part. It reports cores per process and CPU milliseconds
per stream-second; the share is that cost against asr-server's (1.10: the Ray path costs 10%
more). At an N every target holds, this moved by a few percent between runs where the
largest N moved by tens.

Usage::

    python scripts/loadtest_ray.py --tiny -t 20                       # tiny model, CPU
    python scripts/loadtest_ray.py --tiny -t 15 --ray-replicas 1,2 --limit 256
    python scripts/loadtest_ray.py --tiny -t 12 --send-ms 160 --rounds 4 --start 128
    python scripts/loadtest_ray.py --tiny -t 20 --send-ms 160 --ray-replicas 1,2 --cpu-at 192
    python scripts/loadtest_ray.py --model nvidia/nemotron-speech-streaming-en-0.6b \
        --device cuda --dtype bf16 -t 60 --start 64 --limit 4096 --client-procs 8

A running Ray endpoint is measured with ``loadtest_asr.py --url ws://127.0.0.1:8000/v1/stream``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import loadtest_asr as lt  # noqa: E402
import proc_cpu  # noqa: E402

# Targets below this share of the plain server's N miss the target (<= 10% cost).
RAY_TARGET = 0.9


class ClusterProcess(lt.ServerProcess):
    """``voice-agent asr-cluster`` in a subprocess: the same flags as ``asr-server``'s."""

    def __init__(self, model: str, *, replicas: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.args[self.args.index("asr-server")] = "asr-cluster"
        self.args += ["--replicas", str(replicas)]

    def start(self, timeout: float = 300.0) -> None:
        super().start(timeout)
        # /ready answers once HAProxy routes to the replica; let Serve finish its own start.
        time.sleep(2.0)


@dataclass(frozen=True)
class Target:
    name: str
    replicas: int  # 0: the plain asr-server


def run_target(
    target: Target, args: argparse.Namespace, model: str, speech, out: Path, *, round_: int = 1
) -> dict:
    """``find_max`` (or, with ``--cpu-at``, one costed trial) against one freshly started target.

    The target is stopped afterwards.
    """
    log_name = target.name if args.rounds == 1 else f"{target.name}.r{round_}"
    common = {
        "device": args.device,
        "dtype": args.dtype,
        "chunk_ms": args.chunk_ms,
        "max_streams": args.limit,
        "token": args.token,
        "log_path": out / f"{log_name}.log",
        "torch_threads": args.server_threads or (1 if args.device == "cpu" else None),
    }
    if target.replicas:
        server: lt.ServerProcess = ClusterProcess(model, replicas=target.replicas, **common)
    else:
        server = lt.ServerProcess(model, **common)
    base = lt.TrialConfig.from_args(args, streams=args.start)
    print(f"\n== {log_name}: starting on {model} ({args.device}, {args.dtype}) ...")
    started = time.perf_counter()
    server.start()
    print(f"   serving in {time.perf_counter() - started:.1f} s at {server.url}")

    def log(line: str) -> None:
        print(f"   {log_name} {line}")

    if args.cpu_at:
        measured = cpu_trial(server, base, speech, log=log)
    else:
        measured = lt.find_max(
            server.url,
            base,
            speech,
            start=args.start,
            limit=args.limit,
            log=log,
            restart=lambda: asyncio.to_thread(server.restart),
        )
    try:
        report = asyncio.run(measured)
    finally:
        server.stop()
    return {"target": target.name, "replicas": target.replicas, "round": round_, **report}


async def cpu_trial(server: lt.ServerProcess, cfg: lt.TrialConfig, speech, *, log) -> dict:
    """One trial at ``cfg.streams`` with the server tree's CPU read over its steady part.

    The window opens a second after the warm-up and closes a second before the trial's end,
    while every client is streaming.
    """
    if server.proc is None:
        raise RuntimeError("the target is not running")
    window = proc_cpu.CpuWindow(server.proc.pid)
    steady_s = cfg.duration - cfg.warmup_s - 2.0
    if steady_s < 2.0:
        raise SystemExit("--cpu-at needs -t at least --warmup + 4 s")

    async def measure() -> None:
        # The /proc walks run off the loop that drives the clients.
        await asyncio.sleep(cfg.warmup_s + 1.0)
        await asyncio.to_thread(window.start)
        await asyncio.sleep(steady_s)
        await asyncio.to_thread(window.stop)

    measuring = asyncio.create_task(measure())
    trial = await lt.run_trial(server.url, cfg, speech, log=log)
    await measuring
    cpu = dict(window.result)
    cpu["ms_per_stream_s"] = round(1000 * cpu["tree_cores"] / cfg.streams, 3)
    log(
        f"CPU {cpu['tree_cores']:.2f} cores ({cpu['ms_per_stream_s']:.2f} ms per stream-second), "
        f"host busy {cpu['host_busy_cores']:.2f} cores: "
        + ", ".join(f"{k} {v:.2f}" for k, v in list(cpu["cores_by_process"].items())[:6])
    )
    return {"streams": cfg.streams, "ok": trial["ok"], "cpu": cpu, "trial": trial}


def by_target(results: list[dict]) -> tuple[dict[str, list[dict]], list[dict] | None]:
    """Each target's results in run order, and the plain asr-server's (None if not measured)."""
    grouped: dict[str, list[dict]] = {}
    for r in results:
        grouped.setdefault(r["target"], []).append(r)
    plain = next((rs for rs in grouped.values() if not rs[0]["replicas"]), None)
    return grouped, plain


def cpu_summary(results: list[dict]) -> list[dict[str, Any]]:
    """One row per target: its cost per round, the median, and the ratio to asr-server's."""
    grouped, plain = by_target(results)
    plain_cost = statistics.median(r["cpu"]["ms_per_stream_s"] for r in plain) if plain else None
    rows = []
    for name, rs in grouped.items():
        costs = [r["cpu"]["ms_per_stream_s"] for r in rs]
        cost = statistics.median(costs)
        processes: dict[str, list[float]] = {}
        for r in rs:
            for label, cores in r["cpu"]["cores_by_process"].items():
                processes.setdefault(label, []).append(cores)
        rows.append(
            {
                "target": name,
                "streams": rs[0]["streams"],
                "ms_per_stream_s": round(cost, 3),
                "per_round": costs,
                "tree_cores": round(statistics.median(r["cpu"]["tree_cores"] for r in rs), 3),
                "host_busy_cores": round(
                    statistics.median(r["cpu"]["host_busy_cores"] for r in rs), 3
                ),
                # Median over the rounds a process was seen in (a process absent from a round
                # used nothing there).
                "cores_by_process": {
                    label: round(statistics.median(v + [0.0] * (len(rs) - len(v))), 3)
                    for label, v in sorted(processes.items(), key=lambda kv: -sum(kv[1]))
                },
                "all_ok": all(r["ok"] for r in rs),
                "cost_vs_asr_server": round(cost / plain_cost, 3) if plain_cost else None,
            }
        )
    return rows


def print_cpu_rows(rows: list[dict]) -> None:
    print(
        f"\n{'target':<12} {'N':>5} {'cores':>6} {'ms/stream-s':>12} {'per round':>18} "
        f"{'vs asr-server':>14}  heaviest processes (cores)"
    )
    for row in rows:
        ratio = row["cost_vs_asr_server"]
        rounds = ",".join(f"{x:.2f}" for x in row["per_round"])
        heavy = ", ".join(f"{k} {v:.2f}" for k, v in list(row["cores_by_process"].items())[:4])
        flag = "" if row["all_ok"] else " (a trial drifted)"
        print(
            f"{row['target']:<12} {row['streams']:>5} {row['tree_cores']:>6.2f} "
            f"{row['ms_per_stream_s']:>12.2f} {rounds:>18} "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>14}  {heavy}{flag}"
        )


def round_order(targets: list[Target], rounds: int) -> list[tuple[int, Target]]:
    """ABBA order: odd rounds run the targets as given, even rounds in reverse."""
    order = []
    for r in range(1, rounds + 1):
        order += [(r, t) for t in (targets if r % 2 else targets[::-1])]
    return order


def _pyplot():
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_png(results: list[dict], path: Path) -> Path | None:
    """p99 lag against N, one series per target, with each target's largest N."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(dict.fromkeys(r["target"] for r in results))
    for result in results:
        trials = sorted(result["trials"], key=lambda t: t["config"]["streams"])
        ns = [t["config"]["streams"] for t in trials]
        color = f"C{names.index(result['target'])}"
        label = f"{result['target']} r{result.get('round', 1)}"
        ax.plot(ns, [t["lag_s"]["p99"] or 0 for t in trials], "o-", color=color, alpha=0.8,
                label=f"{label} (max N {result['max_streams_no_drift']})")  # fmt: skip
        for t in trials:
            if not t["ok"]:
                ax.plot(t["config"]["streams"], t["lag_s"]["p99"] or 0, "x", color=color, ms=10)
        ax.axvline(result["max_streams_no_drift"], color=color, ls="--", alpha=0.6)
    ax.set_xlabel("streams (x: drift or errors)")
    ax.set_ylabel("p99 lag (s)")
    ax.set_title("Largest N with no drift: plain asr-server vs Ray Serve (HAProxy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary(results: list[dict]) -> list[dict[str, Any]]:
    """One row per target: its N in each round, their median, and the share of asr-server's."""
    grouped, plain = by_target(results)
    plain_by_round = {r.get("round", 1): r["max_streams_no_drift"] for r in plain or []}
    plain_median = statistics.median(plain_by_round.values()) if plain_by_round else None
    rows = []
    for name, rs in grouped.items():
        ns = [r["max_streams_no_drift"] for r in rs]
        best = statistics.median(ns)
        share = best / plain_median if plain_median else None
        per_round = [
            round(r["max_streams_no_drift"] / plain_by_round[r.get("round", 1)], 3)
            if plain_by_round.get(r.get("round", 1))
            else None
            for r in rs
        ]
        top = max(rs, key=lambda r: r["max_streams_no_drift"])
        rows.append(
            {
                "target": name,
                "max_streams_no_drift": int(best) if best == int(best) else best,
                "per_round": ns,
                "share_per_round": per_round,
                "first_failing": top["first_failing"],
                "p99_lag_at_max_s": top["p99_lag_at_max_s"],
                "share_of_asr_server": round(share, 3) if share is not None else None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_group = parser.add_mutually_exclusive_group(required=True)
    model_group.add_argument("--tiny", action="store_true", help="the tiny test model")
    model_group.add_argument("--model", help="a .nemo file or hub id")
    parser.add_argument("--ray-replicas", default="1", help="replica counts to measure (1,2)")
    parser.add_argument("--token", default=None)
    parser.add_argument("-t", "--duration", type=float, default=20.0, help="seconds per trial")
    parser.add_argument("--send-ms", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-drift", type=float, default=0.25)
    parser.add_argument("--start", type=int, default=8, help="first N")
    parser.add_argument("--limit", type=int, default=512, help="largest N tried")
    parser.add_argument("--wav", help="a 16-bit WAV to play instead of the speech cache")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--chunk-ms", type=int, default=160)
    parser.add_argument("--server-threads", type=int, default=None)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the comparison, ABBA order; N per target = median over rounds",
    )
    parser.add_argument(
        "--cpu-at",
        type=int,
        default=None,
        metavar="N",
        help="measure each target's CPU cost at N streams instead of its largest N",
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default loadtest-out/ray-<time>)"
    )
    args = parser.parse_args(argv)

    out = Path(args.out or f"loadtest-out/ray-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    speech, source = lt.load_speech(args.wav)
    model = str(lt.tiny_model_path()) if args.tiny else args.model
    replicas = [int(x) for x in args.ray_replicas.split(",") if x.strip()]
    targets = [Target("asr-server", 0)] + [Target(f"ray-{n}", n) for n in replicas]
    # A plain `kill` must still stop the target running (its finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hardware = lt.hardware()
    if args.cpu_at:
        args.start = args.cpu_at  # the trial's N, within the targets' stream limit
        args.limit = max(args.limit, args.cpu_at)
    results = [
        run_target(t, args, model, speech, out, round_=r)
        for r, t in round_order(targets, max(1, args.rounds))
    ]
    if args.cpu_at:
        return report_cpu(args, model, source, hardware, results, out)
    rows = summary(results)
    report = {
        "benchmark": "loadtest_ray",
        "model": "tiny" if args.tiny else model,
        "engine": {"device": args.device, "dtype": args.dtype, "chunk_ms": args.chunk_ms},
        "speech": source,
        "trial_s": args.duration,
        "rounds": max(1, args.rounds),
        "hardware": hardware,
        "summary": rows,
        "targets": results,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    png = write_png(results, out / "lag.png")
    for result in results:
        print(f"\n{result['target']} (round {result['round']}):")
        print(lt.table(result["trials"]))
    print(
        f"\n{'target':<12} {'max N':>6} {'per round':>18} {'p99 lag':>8} {'vs asr-server':>14}"
        f" {'per round':>18}"
    )
    for row in rows:
        share = row["share_of_asr_server"]
        rounds = ",".join(str(n) for n in row["per_round"])
        shares = ",".join(f"{x:.0%}" if x is not None else "-" for x in row["share_per_round"])
        print(
            f"{row['target']:<12} {row['max_streams_no_drift']:>6} {rounds:>18} "
            f"{lt._fmt(row['p99_lag_at_max_s']):>8} "
            f"{(f'{share:.0%}' if share is not None else '-'):>14} {shares:>18}"
        )
    print(f"\nreport: {out / 'report.json'}" + (f", plot: {png}" if png else ""))
    ray_one = next((r for r in rows if r["target"] == "ray-1"), None)
    if ray_one and ray_one["share_of_asr_server"] is not None:
        verdict = "meets" if ray_one["share_of_asr_server"] >= RAY_TARGET else "misses"
        print(f"ray-1 {verdict} the target of >= {RAY_TARGET:.0%} of asr-server's N")
    return 0


def report_cpu(
    args, model: str, source: str, hardware: dict, results: list[dict], out: Path
) -> int:
    """Write and print ``--cpu-at``'s report."""
    rows = cpu_summary(results)
    report = {
        "benchmark": "loadtest_ray --cpu-at",
        "model": "tiny" if args.tiny else model,
        "engine": {"device": args.device, "dtype": args.dtype, "chunk_ms": args.chunk_ms},
        "speech": source,
        "streams": args.cpu_at,
        "trial_s": args.duration,
        "rounds": max(1, args.rounds),
        "hardware": hardware,
        "summary": rows,
        "targets": results,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    png = write_cpu_png(rows, out / "cpu.png")
    print_cpu_rows(rows)
    print(f"\nreport: {out / 'report.json'}" + (f", plot: {png}" if png else ""))
    return 0


def write_cpu_png(rows: list[dict], path: Path) -> Path | None:
    """Cores per process, stacked, one bar per target."""
    plt = _pyplot()
    if plt is None:
        return None
    labels = list(dict.fromkeys(k for row in rows for k in row["cores_by_process"]))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bottoms = [0.0] * len(rows)
    names = [f"{row['target']}\n{row['ms_per_stream_s']:.2f} ms/stream-s" for row in rows]
    for i, label in enumerate(labels):
        values = [row["cores_by_process"].get(label, 0.0) for row in rows]
        ax.bar(names, values, bottom=bottoms, label=label, color=f"C{i % 10}")
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_ylabel("cores (CPU seconds per second)")
    ax.set_title(f"CPU of each target's process tree at {rows[0]['streams']} streams")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
