#!/usr/bin/env python
"""Finals inside the live calls vs finals in calls of their own, same model, same audio.

B streams speak; in one tick F of them ask for a final while all B step live. With
``final_rows=0`` (the reference path) each group of finals runs its own encoder calls on a
private copy of its state; with ``final_rows >= F`` the finals' sub-steps join the live calls on
pool rows of their own. Reported per (B, F): the tick's wall time, its encoder calls, and the
time from the final requests to the last result (median over ``--repeats`` ticks, after one
warm-up tick). Random
weights at the real shape cost what the trained model costs.

Example:
  python scripts/bench_finals.py --arch nemotron-0.6b --batch 16 --finals 1,4,8 \
      --out bench_results/finals_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.asr.engine import ASREngine, EngineConfig  # noqa: E402
from services.asr.engine.arch import babble, build_model  # noqa: E402


def measure(model, args, final_rows: int, n_finals: int) -> dict:
    """Median tick time, encoder calls and final latency of ticks where finals join B streams."""
    config = EngineConfig(
        model=f"random:{args.arch}",
        device=args.device,
        dtype=args.dtype,
        chunk_ms=args.chunk_ms,
        cuda_graphs=args.cuda_graphs,
        max_streams=args.batch,
        max_batch=args.batch,
        final_rows=final_rows,
        batch_window_ms=0,
        freeze_gc=False,
    )
    engine = ASREngine(config, model=model)
    runner = engine._runner
    hop = runner.features.hop
    chunk = runner.chunk * hop
    streams = [engine.open_stream() for _ in range(args.batch)]
    audio = [babble(args.seconds, seed) for seed in range(args.batch)]
    # Each stream holds a step's worth plus a little: every repeat adds one chunk, so the live
    # step takes one chunk and each final covers it and the rest (two sub-steps).
    pos = runner.features.samples_needed(runner.chunk_first) + chunk + 6 * hop
    ticks, calls, latency = [], [], []
    try:
        with engine._tick_lock, torch.inference_mode():  # this thread runs every tick
            for stream, a in zip(streams, audio, strict=True):
                stream.push_audio(a[:pos])
            while engine._tick_once():
                pass
            for repeat in range(args.repeats + 1):  # the first is a warm-up
                for stream, a in zip(streams, audio, strict=True):
                    stream.push_audio(a[pos : pos + chunk])
                pos += chunk
                asking = streams[repeat % 2 :: max(args.batch // n_finals, 1)][:n_finals]
                started = time.perf_counter()
                futures = [s.request_final() for s in asking]
                before = engine._encoder_calls
                while not all(f.done() for f in futures):
                    engine._tick_once()
                done = time.perf_counter()
                if repeat:
                    ticks.append(engine._tick_ms[-1])
                    calls.append(engine._encoder_calls - before)
                    latency.append((done - started) * 1000)
                for f in futures:
                    f.result()
                while engine._tick_once():  # the live steps left behind the finals
                    pass
    finally:
        engine.shutdown()
    return {
        "batch": args.batch,
        "finals": n_finals,
        "final_rows": final_rows,
        "tick_ms": statistics.median(ticks),
        "encoder_calls": statistics.median(calls),
        "time_to_finals_ms": statistics.median(latency),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in (("own calls (final_rows=0)", 0), ("inside the live calls", 1)):
        pts = [r for r in results if (r["final_rows"] > 0) == bool(rows)]
        ax.plot([r["finals"] for r in pts], [r["tick_ms"] for r in pts], "o-", label=label)
    ax.set_xlabel("finals in the tick")
    ax.set_ylabel("tick ms")
    ax.set_title(f"B={results[0]['batch']} live streams + finals")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="nemotron-0.6b", choices=["tiny", "nemotron-0.6b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--chunk-ms", type=int, default=160)
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--finals", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--out", default="bench_results/finals")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    finals = [int(f) for f in args.finals.split(",")]
    print(f"building {args.arch} with random weights on {args.device} ...", flush=True)
    model = build_model(args.arch, seed=0).to(args.device)
    results = []
    for n in finals:
        for rows in (0, n):
            results.append(measure(model, args, rows, n))
            r = results[-1]
            print(
                f"B={r['batch']} finals={n} final_rows={rows}: tick {r['tick_ms']:.1f} ms, "
                f"{r['encoder_calls']:g} calls",
                flush=True,
            )
    report = {
        "args": vars(args),
        "weights": "random (full-size compute)" if args.arch != "tiny" else "random, tiny",
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_finals.json").write_text(json.dumps(report, indent=2))
    plot(results, out / "bench_finals.png")
    print(f"\nB={args.batch} live streams, {args.arch} ({report['weights']}) on {report['device']}")
    print("finals  path          tick ms   encoder calls   time to finals ms")
    for r in results:
        path = "live calls" if r["final_rows"] else "own calls"
        print(
            f"{r['finals']:<8}{path:<14}{r['tick_ms']:<10.1f}{r['encoder_calls']:<16g}"
            f"{r['time_to_finals_ms']:.1f}"
        )
    print(f"\nwrote {out / 'bench_finals.json'} and bench_finals.png")
    return 0 if all(np.isfinite(r["tick_ms"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
