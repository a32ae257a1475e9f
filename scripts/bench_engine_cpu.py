#!/usr/bin/env python
"""The engine's CPU side per row and tick, with the model step replaced by a fake.

What a GPU engine spends on the host around its device step: planning the tick (inboxes,
readiness, audio windows), the glue of the execute path and committing results (positions,
text, events). The model calls are replaced by FAKES that behave like a device of fixed step
time (``--fake-step-ms``): the encoder calls are queued at once, and the decode waits until the
step time has passed since the first of them, as a host waits for its GPU. Features, encoder and
decoder return zeros of the right shapes, and one row in ``--token-every`` emits a token so
commits do text work. Visible CPU per row = (tick time - fake step) / B, with ``plan_ahead`` off
and on (each stream holds one chunk more than the tick steps, so the next tick's rows are ready
while the fake device runs). Ingestion (``push_audio`` of 20 ms messages, on the callers'
threads) is reported per message.

Example:
  python scripts/bench_engine_cpu.py --batches 1024,4096 --out bench_results/engine_cpu
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
from services.asr.engine.arch import build_model  # noqa: E402
from services.asr.engine.runner import EncoderOut  # noqa: E402


def fake_model(engine: ASREngine, step_s: float, token_every: int) -> None:
    """Replace the runner's model calls with FAKES (a device of fixed step time, zero outputs)."""
    runner = engine._runner
    d_model = int(runner.model.encoder.d_model)
    busy_until = [0.0]  # when the fake device finishes what was queued

    def compute(windows: np.ndarray, n_frames: int) -> torch.Tensor:  # FAKE features
        return torch.zeros(windows.shape[0], runner.n_mels, n_frames)

    def encode(kind, new_mel, caches, rows=None, keep_all=False) -> EncoderOut:  # FAKE encoder
        parts = new_mel if isinstance(new_mel, list) else [new_mel]
        batch = sum(part.shape[0] for part in parts)
        now = time.perf_counter()
        if busy_until[0] <= now:  # the tick's first call: the device starts its step
            busy_until[0] = now + step_s
        n = runner.out_per_step
        return EncoderOut(torch.zeros(batch, d_model, n), torch.full((batch,), n))

    def decode(encoded, lengths, state):  # FAKE decoder: a token in every token_every-th row
        wait = busy_until[0] - time.perf_counter()
        if wait > 0:  # the host waits for the device step
            time.sleep(wait)
        rows = encoded.shape[0]
        counts = (np.arange(rows) % token_every == 0).astype(np.int64)
        return counts, np.ones((rows, 1), np.int64), np.zeros((rows, 1), np.int64), state

    runner.features.compute = compute
    runner.encode = encode
    runner.decode = decode


def measure(batch: int, ticks: int, step_s: float, token_every: int, plan_ahead: bool) -> dict:
    model = build_model("tiny")
    config = EngineConfig(
        plan_ahead=plan_ahead,
        model="random:tiny",
        device="cpu",
        max_streams=batch,
        max_batch=batch,
        warmup=False,
        batch_window_ms=0,
        freeze_gc=False,
    )
    engine = ASREngine(config, model=model)
    fake_model(engine, step_s, token_every)
    runner = engine._runner
    first = runner.features.samples_needed(runner.chunk_first)
    chunk = runner.chunk * runner.features.hop
    audio = np.zeros(first + (ticks + 2) * chunk, np.float32)
    message = 320  # 20 ms
    per_chunk = chunk // message
    tick_s, push_s = [], []
    try:
        with engine._tick_lock, torch.inference_mode():
            streams = [engine.open_stream() for _ in range(batch)]
            for s in streams:  # a first step and one chunk more
                s.push_audio(audio[: first + chunk])
            engine._tick_once()
            pos = first + chunk
            for _ in range(ticks):
                t0 = time.perf_counter()
                for s in streams:
                    for k in range(per_chunk):
                        s.push_audio(audio[pos + k * message : pos + (k + 1) * message])
                push_s.append(time.perf_counter() - t0)
                pos += chunk
                t0 = time.perf_counter()
                rows = engine._tick_once()
                tick_s.append(time.perf_counter() - t0)
                if rows != batch:
                    raise RuntimeError(f"a tick ran {rows} rows, not {batch}")
    finally:
        engine.shutdown()
    tick = statistics.median(tick_s)
    return {
        "batch": batch,
        "plan_ahead": plan_ahead,
        "tick_ms": tick * 1000,
        "fake_step_ms": step_s * 1000,
        "visible_cpu_us_per_row": max(tick - step_s, 0.0) / batch * 1e6,
        "ingestion_us_per_message": statistics.median(push_s) / (batch * per_chunk) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1024,4096")
    parser.add_argument("--ticks", type=int, default=6)
    parser.add_argument("--fake-step-ms", type=float, default=20.0)
    parser.add_argument("--token-every", type=int, default=8)
    parser.add_argument("--out", default="bench_results/engine_cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [
        measure(int(b), args.ticks, args.fake_step_ms / 1000, args.token_every, ahead)
        for b in args.batches.split(",")
        for ahead in (False, True)
    ]
    report = {
        "args": vars(args),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_engine_cpu.json").write_text(json.dumps(report, indent=2))
    load = report["load_avg_1m"]
    print(f"\nengine CPU side, fake model step of {args.fake_step_ms:g} ms (load {load:.1f})")
    print("B        plan_ahead  tick ms   visible CPU us/row   ingestion us/20 ms message")
    for r in results:
        print(
            f"{r['batch']:<9}{'on' if r['plan_ahead'] else 'off':<12}{r['tick_ms']:<10.1f}"
            f"{r['visible_cpu_us_per_row']:<21.1f}{r['ingestion_us_per_message']:.2f}"
        )
    print(f"\nwrote {out / 'bench_engine_cpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
