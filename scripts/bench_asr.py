#!/usr/bin/env python
"""Benchmark the batched cache-aware ASR engine against two baselines, same model, same audio.

Systems (all on one model object, in one run):
  engine    services.asr.engine: per tick ONE batched cache-aware encoder step + ONE greedy decode
            for every stream with a full chunk.
  buffered  NeMo's buffered inference: every chunk, re-encode a sliding window (default 4 s) of
            each stream without caches and decode the newest frames; batched over streams.
  shipped   NeMo as shipped: one ``conformer_stream_step`` per stream, one stream after another.

For each: step time vs batch size (time to advance B streams by one chunk), capacity in real-time
streams (B x chunk / step, at the best B whose step fits in a chunk), chunk latency p50/p95/p99
under real-time paced load of N streams (audio complete -> result), and time to final.

Random weights (``--arch``) cost the same compute as trained ones. The joint's blank logit is
raised (``--blank-bias``) so that random weights emit about as rarely as a trained model; every
system decodes with the same model, so the comparison stays fair.

Examples:
  python scripts/bench_asr.py --arch tiny --device cpu --threads 1 --out bench_results/asr_cpu
  python scripts/bench_asr.py --arch nemotron-0.6b --device cuda --dtype bf16 --cuda-graphs \\
      --batches 1,8,64,256,1024 --streams 256 --out bench_results/asr_h100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
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
from services.asr.engine.arch import ARCHS, babble, build_model  # noqa: E402
from services.asr.engine.engine import _on_device  # noqa: E402
from services.asr.engine.loader import configure_for_streaming, load_asr_model  # noqa: E402
from services.asr.engine.runner import ModelRunner  # noqa: E402

SR = 16000
HOP = 160
logger = logging.getLogger("bench_asr")


# ---------------------------------------------------------------- audio


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Exactly ``seconds`` of the tests' speech-like audio (float32, 16 kHz)."""
    return babble(math.ceil(seconds * 10) / 10, seed)[: int(seconds * SR)]


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- systems


class EngineSystem:
    """The engine, ticked by hand for step times and by its own thread for the paced run."""

    name = "engine"

    def __init__(self, model, config: EngineConfig) -> None:
        self.engine = ASREngine(config, model=model)
        self.runner = self.engine._runner
        self.device = self.engine.device
        self.first_samples = self.runner.features.samples_needed(self.runner.chunk_first)
        self.chunk_samples = self.runner.chunk * HOP

    def step_time(self, batch: int, repeats: int) -> float:
        streams = [self.engine.open_stream() for _ in range(batch)]
        audio = speechlike((self.first_samples + (repeats + 3) * self.chunk_samples) / SR, 1)
        times = []
        try:
            with self.engine._tick_lock, torch.inference_mode(), _on_device(self.device):
                for s in streams:
                    s.push_audio(audio[: self.first_samples])
                self.engine._tick_once()  # first steps
                pos = self.first_samples
                for r in range(repeats + 2):
                    for s in streams:
                        s.push_audio(audio[pos : pos + self.chunk_samples])
                    pos += self.chunk_samples
                    sync(self.device)
                    t0 = time.perf_counter()
                    rows = self.engine._tick_once()
                    sync(self.device)
                    if r >= 2:  # the first later steps warm allocator caches
                        times.append(time.perf_counter() - t0)
                    assert rows == batch, (rows, batch)
        finally:
            for s in streams:
                s.close()
        return statistics.median(times)

    def time_to_final_idle(self, repeats: int) -> float:
        audio = speechlike(2.0, 2)
        sched = self.engine._scheduler
        caught_up, n = 0, sched.chunk_first
        while sched.features.samples_needed(caught_up + n) <= len(audio):
            caught_up, n = caught_up + n, sched.chunk
        out = []
        for _ in range(repeats):
            stream = self.engine.open_stream()
            stream.push_audio(audio)
            # As at a VAD stop: the live stream has kept up, the final pads the last chunk.
            deadline = time.monotonic() + 60
            while stream._state.mel_pos < caught_up and time.monotonic() < deadline:
                time.sleep(0.001)
            out.append(stream.finalize_sync(120).latency_s)
            stream.close()
        return statistics.median(out)

    def paced(self, n_streams: int, seconds: float, chunk_s: float) -> dict:
        """N streams pushing 20 ms frames in real time; then all of them finalize at once."""
        engine = self.engine
        with engine._lock:
            engine._chunk_ms.clear()
        streams = [engine.open_stream() for _ in range(n_streams)]
        audios = [speechlike(seconds, 100 + i) for i in range(n_streams)]
        offsets = np.random.default_rng(0).uniform(0, chunk_s, n_streams)
        frame = 320
        t0 = time.perf_counter() + 0.05
        # Each stream's k-th frame is due at t0 + offset + (k+1) * 20 ms.
        schedule = sorted(
            (t0 + offsets[i] + (k + 1) * frame / SR, i, k * frame)
            for i in range(n_streams)
            for k in range(len(audios[i]) // frame)
        )
        lateness = []
        for due, i, start in schedule:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                lateness.append(-delay)
            streams[i].push_audio(audios[i][start : start + frame])
        futures = [engine._request_final(s) for s in streams]
        finals = [f.result(300).latency_s for f in futures]
        with engine._lock:
            chunk_ms = list(engine._chunk_ms)
        for s in streams:
            s.close()
        return {
            "chunk_latency_ms": {
                q: pct(chunk_ms, v) for q, v in (("p50", 50), ("p95", 95), ("p99", 99))
            },
            "time_to_final_ms": {
                "p50": pct([f * 1000 for f in finals], 50),
                "p99": pct([f * 1000 for f in finals], 99),
                "note": f"{n_streams} streams finalize at once",
            },
            "feeder_late_ms_p99": pct([x * 1000 for x in lateness], 99) or 0.0,
            "chunks_measured": len(chunk_ms),
        }


class _Baseline:
    """Shared parts of the two baselines: paced load simulated on the wall clock."""

    name = "baseline"

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.model = runner.model
        self.device = runner.device
        self.chunk_first, self.chunk = runner.chunk_first, runner.chunk
        self.chunk_samples = self.chunk * HOP

    def _autocast(self):
        return self.runner._autocast()

    def _mel(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        signal = torch.from_numpy(windows).to(self.device)
        lengths = torch.full((windows.shape[0],), windows.shape[1], device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            return self.model.preprocessor(input_signal=signal, length=lengths)

    def process(self, streams: list[int]) -> None:  # advance these streams by one chunk
        raise NotImplementedError

    def reset(self, n_streams: int, seconds: float) -> None:
        raise NotImplementedError

    def step_time(self, batch: int, repeats: int) -> float:
        self.reset(batch, (repeats + 8) * self.chunk_samples / SR + 5)
        times = []
        with torch.inference_mode():
            for r in range(repeats + 2):
                sync(self.device)
                t0 = time.perf_counter()
                self.process(list(range(batch)))
                sync(self.device)
                if r >= 2:
                    times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def paced(self, n_streams: int, seconds: float, chunk_s: float) -> dict:
        """Real-time arrival of chunks, served by one worker as fast as it can (same clock)."""
        self.reset(n_streams, seconds + 5)
        offsets = np.random.default_rng(0).uniform(0, chunk_s, n_streams)
        n_chunks = int(seconds / chunk_s)
        done = [0] * n_streams
        latencies = []
        t0 = time.perf_counter() + 0.05
        with torch.inference_mode():
            while min(done) < n_chunks:
                now = time.perf_counter()
                ready = [
                    i
                    for i in range(n_streams)
                    if done[i] < n_chunks and t0 + offsets[i] + (done[i] + 1) * chunk_s <= now
                ]
                if not ready:
                    nxt = min(
                        t0 + offsets[i] + (done[i] + 1) * chunk_s
                        for i in range(n_streams)
                        if done[i] < n_chunks
                    )
                    time.sleep(max(0.0, nxt - now))
                    continue
                self.process(ready)
                sync(self.device)
                end = time.perf_counter()
                for i in ready:
                    latencies.append((end - (t0 + offsets[i] + (done[i] + 1) * chunk_s)) * 1000)
                    done[i] += 1
        ttf = self.time_to_final_idle(3)
        return {
            "chunk_latency_ms": {
                q: pct(latencies, v) for q, v in (("p50", 50), ("p95", 95), ("p99", 99))
            },
            "time_to_final_ms": {"p50": ttf * 1000, "p99": ttf * 1000, "note": "one stream, idle"},
            "chunks_measured": len(latencies),
        }


class BufferedSystem(_Baseline):
    """Re-encode the last ``window_s`` of every stream each chunk (no caches), batched."""

    name = "buffered"

    def __init__(self, runner: ModelRunner, window_s: float) -> None:
        super().__init__(runner)
        self.window = int(window_s * SR)
        self.n_out = runner.out_per_step

    def reset(self, n_streams: int, seconds: float) -> None:
        self.audio = [
            speechlike(max(seconds, self.window / SR + 1), 10 + i) for i in range(n_streams)
        ]
        # Start with a full window already heard, as in steady state.
        self.pos = [self.window] * n_streams
        self.state = [None] * n_streams

    def _window_rows(self, streams: list[int]) -> np.ndarray:
        rows = []
        for i in streams:
            end = self.pos[i] + self.chunk_samples
            if end > len(self.audio[i]):  # wrap: the content does not matter for timing
                self.pos[i], end = self.window, self.window + self.chunk_samples
            rows.append(self.audio[i][end - self.window : end])
            self.pos[i] = end
        return np.stack(rows)

    def _encode_decode(self, windows: np.ndarray, streams: list[int], n_frames: int | None) -> None:
        mel, mel_len = self._mel(windows)
        with self._autocast():
            enc, enc_len = self.model.encoder(audio_signal=mel, length=mel_len)
        take = enc.shape[2] if n_frames is None else n_frames
        newest = enc[:, :, enc.shape[2] - take :]
        lengths = torch.full((len(streams),), take, dtype=torch.long, device=self.device)
        layout = self.runner.decoder_layout
        states = [
            self.state[i] if self.state[i] is not None else [s.clone() for s in layout.start]
            for i in streams
        ]
        batched = [
            torch.cat([st[k] for st in states], dim=d) for k, d in enumerate(layout.batch_dims)
        ]
        _, new = self.runner.decode(newest, lengths, batched)
        for row, i in enumerate(streams):
            self.state[i] = [
                t.narrow(d, row, 1) for t, d in zip(new, layout.batch_dims, strict=True)
            ]

    def process(self, streams: list[int]) -> None:
        self._encode_decode(self._window_rows(streams), streams, self.n_out)

    def time_to_final_idle(self, repeats: int) -> float:
        self.reset(1, 6)
        out = []
        with torch.inference_mode():
            for _ in range(repeats):
                rows = self._window_rows([0])
                sync(self.device)
                t0 = time.perf_counter()
                self._encode_decode(rows, [0], None)  # the last window, every frame decoded
                sync(self.device)
                out.append(time.perf_counter() - t0)
        return statistics.median(out)


class ShippedSystem(_Baseline):
    """NeMo's ``conformer_stream_step``, called once per stream, sequentially."""

    name = "shipped"

    def reset(self, n_streams: int, seconds: float) -> None:
        enc = self.model.encoder
        self.audio = [speechlike(max(seconds, 3), 20 + i) for i in range(n_streams)]
        self.streams = []
        for _ in range(n_streams):
            ch, ct, ch_len = enc.get_initial_cache_state(batch_size=1, device=self.device)
            self.streams.append({"caches": (ch, ct, ch_len), "hyp": None, "mel_pos": 0})

    def _step(self, i: int, keep_all: bool = False) -> None:
        s = self.streams[i]
        feats = self.runner.features
        first = s["mel_pos"] == 0
        a = s["mel_pos"] if first else s["mel_pos"] - self.runner.pre_cache
        b = s["mel_pos"] + (self.chunk_first if first else self.chunk)
        if feats.samples_needed(b) > len(self.audio[i]):  # wrap for long timing runs
            s["mel_pos"], a = 0, 0
            b = self.chunk_first
            first = True
            s["caches"] = self.model.encoder.get_initial_cache_state(
                batch_size=1, device=self.device
            )
        lo, hi = feats.window(a, b)
        window = np.zeros(hi - lo, np.float32)
        src_lo = max(lo, 0)
        window[src_lo - lo :] = self.audio[i][src_lo:hi]
        mel = feats.compute(window[None], b - a)
        ch, ct, ch_len = s["caches"]
        with self._autocast():
            result = self.model.conformer_stream_step(
                processed_signal=mel,
                processed_signal_length=torch.tensor([mel.shape[2]], device=self.device),
                cache_last_channel=ch,
                cache_last_time=ct,
                cache_last_channel_len=ch_len,
                keep_all_outputs=keep_all,
                previous_hypotheses=s["hyp"],
                drop_extra_pre_encoded=0 if first else self.runner.drop_later,
                return_transcription=True,
            )
        s["caches"] = (result[2], result[3], result[4])
        s["hyp"] = result[5]
        # Long streams: keep the decoder state, drop old tokens (as the engine does).
        for hyp in s["hyp"] or []:
            if len(hyp.y_sequence) > 64:
                hyp.y_sequence = hyp.y_sequence[-8:]
                hyp.timestamp = []
        s["mel_pos"] = b

    def process(self, streams: list[int]) -> None:
        for i in streams:
            if self.streams[i]["mel_pos"] == 0:
                self._step(i)  # first step (shorter); not what we time in steady state
            self._step(i)

    def time_to_final_idle(self, repeats: int) -> float:
        self.reset(1, 6)
        out = []
        with torch.inference_mode():
            for _ in range(repeats):
                self._step(0)
                sync(self.device)
                t0 = time.perf_counter()
                self._step(0, keep_all=True)
                sync(self.device)
                out.append(time.perf_counter() - t0)
        return statistics.median(out)


# ---------------------------------------------------------------- main


def capacity(step_s: dict[int, float], chunk_s: float) -> dict:
    fits = {b: b * chunk_s / t for b, t in step_s.items() if t <= chunk_s}
    if not fits:
        return {"streams": 0.0, "batch": None, "bounded_by_largest_batch": False}
    best = max(fits, key=fits.get)
    return {
        "streams": fits[best],
        "batch": best,
        # If the largest batch measured still fits in a chunk, the true capacity may be higher.
        "bounded_by_largest_batch": best == max(step_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="tiny")
    parser.add_argument("--model", help="a .nemo path or HF id instead of random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--chunk-ms", type=int, default=160, choices=(80, 160, 560, 1120))
    parser.add_argument(
        "--batches",
        default="1,2,4,8,16,32,64,128,256,512",
        help="batch sizes to time; a system stops at the first whose step exceeds a chunk",
    )
    parser.add_argument(
        "--shipped-max-batch",
        type=int,
        default=32,
        help="largest batch timed for 'shipped' (its step time is linear in B)",
    )
    parser.add_argument("--streams", type=int, default=16, help="streams in the paced run")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the paced run")
    parser.add_argument("--window-s", type=float, default=4.0, help="buffered baseline window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blank-bias", type=float, default=8.0)
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--systems", default="engine,buffered,shipped")
    parser.add_argument("--out", default="bench_results/asr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    batches = sorted({int(b) for b in args.batches.split(",")})
    systems = args.systems.split(",")
    config = EngineConfig(
        model=args.model or f"random:{args.arch}",
        device=args.device,
        dtype=args.dtype,
        chunk_ms=args.chunk_ms,
        max_streams=max(max(batches), args.streams) + 8,
        max_batch=max(max(batches), args.streams),
        cuda_graphs=args.cuda_graphs,
    )
    device = torch.device(config.resolved_device())
    chunk_s = args.chunk_ms / 1000
    started = time.time()
    if args.model:
        model = load_asr_model(config, str(device))
    else:
        model = build_model(args.arch, seed=0, blank_bias=args.blank_bias).to(device)
        configure_for_streaming(model, config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %.1fM parameters, on %s", config.model, n_params / 1e6, device)

    engine_sys = EngineSystem(model, config)  # also configures the model for streaming
    runner = engine_sys.runner
    impls = {
        "engine": engine_sys,
        "buffered": BufferedSystem(runner, args.window_s),
        "shipped": ShippedSystem(runner),
    }
    results: dict[str, dict] = {}
    for name in systems:
        impl = impls[name]
        logger.info("== %s: step time vs batch", name)
        steps = {}
        for b in batches:
            if name == "shipped" and b > args.shipped_max_batch:
                continue
            steps[b] = impl.step_time(b, args.repeats)
            logger.info("%s B=%d step %.1f ms", name, b, steps[b] * 1000)
            if steps[b] > chunk_s:
                break  # no longer real time: larger batches only get slower
        cap = capacity(steps, chunk_s)
        logger.info(
            "== %s: %d streams paced in real time for %.0f s", name, args.streams, args.seconds
        )
        paced = impl.paced(args.streams, args.seconds, chunk_s)
        if name == "engine":
            paced["time_to_final_idle_ms"] = engine_sys.time_to_final_idle(3) * 1000
        results[name] = {
            "step_ms": {str(b): t * 1000 for b, t in steps.items()},
            "capacity": cap,
            **paced,
        }
    engine_sys.engine.shutdown()

    report = {
        "args": vars(args),
        "model": {"name": config.model, "params_m": n_params / 1e6},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.time() - started,
        "results": results,
    }
    if "engine" in results and "buffered" in results and results["buffered"]["capacity"]["streams"]:
        report["engine_vs_buffered_capacity"] = (
            results["engine"]["capacity"]["streams"] / results["buffered"]["capacity"]["streams"]
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_asr.json").write_text(json.dumps(report, indent=2))
    plot(
        results,
        chunk_s,
        out / "bench_asr.png",
        f"{config.model} on {report['device_name']}, {args.dtype}, {args.chunk_ms} ms chunks",
    )
    print_table(results, batches, report)
    print(f"\nwrote {out / 'bench_asr.json'} and {out / 'bench_asr.png'}")
    return 0


def print_table(results: dict, batches: list[int], report: dict) -> None:
    def fmt(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    print(
        f"\nASR benchmark: {report['model']['name']} ({report['model']['params_m']:.1f}M) on "
        f"{report['device_name']} ({report['device']}), load avg {report['load_avg_1m']:.1f} on "
        f"{report['cpu_count']} cores"
    )
    head = "system    " + "".join(f"B={b:<8}" for b in batches)
    print("\nstep time (ms) to advance B streams by one chunk\n" + head)
    for name, r in results.items():
        print(f"{name:<10}" + "".join(f"{fmt(r['step_ms'].get(str(b))):<10}" for b in batches))
    print(
        "\nsystem    capacity(streams)  at B   chunk p50/p95/p99 (ms)      time-to-final p50 (ms)"
    )
    for name, r in results.items():
        cap = r["capacity"]
        lat = r["chunk_latency_ms"]
        bound = "+" if cap["bounded_by_largest_batch"] else " "
        at = fmt(cap["batch"], "d") if cap["batch"] else "-"
        print(
            f"{name:<10}{fmt(cap['streams'], '.0f') + bound:<19}{at:<5}"
            f"{fmt(lat['p50'])}/{fmt(lat['p95'])}/{fmt(lat['p99']):<18}"
            f"{fmt(r['time_to_final_ms']['p50'])} ({r['time_to_final_ms']['note']})"
        )
        if "time_to_final_idle_ms" in r:
            print(f"{'':<58}{fmt(r['time_to_final_idle_ms'])} (one stream, idle)")
    if "engine_vs_buffered_capacity" in report:
        print(
            f"\nengine capacity / buffered capacity = {report['engine_vs_buffered_capacity']:.1f}x"
        )


def plot(results: dict, chunk_s: float, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        bs = [int(b) for b in r["step_ms"]]
        ax1.plot(bs, list(r["step_ms"].values()), marker="o", label=name)
        ax2.plot(
            bs,
            [b * chunk_s * 1000 / t for b, t in zip(bs, r["step_ms"].values(), strict=True)],
            marker="o",
            label=name,
        )
    ax1.axhline(chunk_s * 1000, color="grey", ls="--", label="chunk (real time)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (streams per step)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax1.set_ylabel("step time (ms)")
    ax2.set_ylabel("B x chunk / step (real-time streams)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
