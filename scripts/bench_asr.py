#!/usr/bin/env python
"""Benchmark the batched cache-aware ASR engine against NeMo's baselines, same model, same audio.

Systems (all on one model object, in one run; ``--systems`` picks them):
  engine           services.asr.engine as configured (``--encoder``, the K/V-cached step by
                   default): per tick ONE batched encoder step + ONE greedy decode for every
                   stream with a full chunk.
  engine-nemo      the same engine on NeMo's own ``cache_aware_stream_step`` (encoder = nemo).
  shipped          NeMo as shipped: one ``conformer_stream_step`` per stream, one after another.
  shipped-batched  NeMo's step batched: one ``conformer_stream_step`` call for all B streams,
                   as NeMo's own streaming pipeline runs it.
  buffered         NeMo's buffered inference: every chunk, re-encode a sliding window (default
                   4 s) of each stream without caches and decode the newest frames; batched.

For each: step time vs batch size (time to advance B streams by one chunk), FLOPs of one step
(counted by torch.utils.flop_counter on the real step) and an analytic byte count (weights read
once + per-stream state read and written), capacity in real-time streams (B x chunk / step, at
the best B whose step fits in a chunk), chunk latency p50/p95/p99 under real-time paced load of N
streams (audio complete -> result; ``--streams 0`` skips it), and time to final.

Random weights (``--arch``) cost the same compute as trained ones. The joint's blank logit is
raised (``--blank-bias``) so that random weights emit about as rarely as a trained model; every
system decodes with the same model, so the comparison stays fair.

Examples:
  python scripts/bench_asr.py --arch tiny --device cpu --threads 1 --out bench_results/asr_cpu
  python scripts/bench_asr.py --arch nemotron-0.6b --device cpu --threads 2 --batches 1,4,8 \\
      --all-batches --systems engine,engine-nemo --streams 0 --out bench_results/asr_cpu_encoders
  python scripts/bench_asr.py --arch nemotron-0.6b --device cuda --dtype bf16 --cuda-graphs \\
      --batches 1,8,64,256,1024 --streams 256 --out bench_results/asr_h100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
SYSTEMS = ("engine", "engine-nemo", "shipped", "shipped-batched", "buffered")
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


def count_flops(fn) -> int:
    """FLOPs of the torch ops ``fn`` runs on this thread (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def weight_bytes(model, dtype: str) -> int:
    """Bytes of the weights one step reads (every parameter once, in the compute dtype)."""
    per = 2 if dtype == "bf16" else 4
    return sum(p.numel() for p in model.parameters()) * per


# ---------------------------------------------------------------- systems


class EngineSystem:
    """The engine, ticked by hand for step times and by its own thread for the paced run."""

    def __init__(self, model, config: EngineConfig, name: str = "engine") -> None:
        self.name = name
        self.engine = ASREngine(config, model=model)
        self.runner = self.engine._runner
        self.device = self.engine.device
        self.first_samples = self.runner.features.samples_needed(self.runner.chunk_first)
        self.chunk_samples = self.runner.chunk * HOP
        self._weight_bytes = weight_bytes(model, config.dtype)

    def memory_model(self) -> dict:
        pool = self.engine._pool
        decoder = tensor_bytes(pool._decoder.start)
        return {
            "encoder": self.runner.encoder.name,
            "weight_bytes": self._weight_bytes,
            "state_bytes_per_stream": self.runner.cache_layout.nbytes_per_stream() + decoder,
        }

    def close(self) -> None:
        self.engine.shutdown()

    def step_time(self, batch: int, repeats: int, flops: bool = False) -> tuple[float, int | None]:
        streams = [self.engine.open_stream() for _ in range(batch)]
        audio = speechlike((self.first_samples + (repeats + 4) * self.chunk_samples) / SR, 1)
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
                counted = None
                if flops:  # one more later step, counted
                    for s in streams:
                        s.push_audio(audio[pos : pos + self.chunk_samples])
                    counted = count_flops(self.engine._tick_once)
        finally:
            for s in streams:
                s.close()
        return statistics.median(times), counted

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
        self.dtype = runner.config.dtype

    def _autocast(self):
        # NeMo's steps decode under the same autocast, and the bf16 LSTM has no oneDNN kernel:
        # on a CPU (dry runs) the baselines stay fp32.
        if self.dtype != "bf16" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def memory_model(self) -> dict:
        nemo_caches = self.model.encoder.get_initial_cache_state(batch_size=1, device=self.device)
        per = 2 if self.dtype == "bf16" else 4
        state = sum(t.numel() for t in nemo_caches[:2]) * per
        return {
            "encoder": "nemo",
            "weight_bytes": weight_bytes(self.model, self.dtype),
            "state_bytes_per_stream": state + tensor_bytes(self.runner.decoder_layout.start),
        }

    def close(self) -> None:
        pass

    def _mel(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        signal = torch.from_numpy(windows).to(self.device)
        lengths = torch.full((windows.shape[0],), windows.shape[1], device=self.device)
        with torch.autocast(self.device.type, enabled=False):
            return self.model.preprocessor(input_signal=signal, length=lengths)

    def process(self, streams: list[int]) -> None:  # advance these streams by one chunk
        raise NotImplementedError

    def reset(self, n_streams: int, seconds: float) -> None:
        raise NotImplementedError

    def step_time(self, batch: int, repeats: int, flops: bool = False) -> tuple[float, int | None]:
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
            counted = count_flops(lambda: self.process(list(range(batch)))) if flops else None
        return statistics.median(times), counted

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

    def memory_model(self) -> dict:
        out = super().memory_model()
        out["encoder"] = "nemo (no cache)"
        out["state_bytes_per_stream"] = self.window * 4 + tensor_bytes(
            self.runner.decoder_layout.start
        )
        return out

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
        *_, new = self.runner.decode(newest, lengths, batched)
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


class ShippedBatchedSystem(_Baseline):
    """NeMo's ``conformer_stream_step`` called once for a whole batch of streams.

    That is how NeMo's own streaming pipeline runs it: every stream's caches in batched tensors
    (NeMo's layout, each row with its own cache length), one call per chunk for the streams
    that have one, previous hypotheses passed in and extended.
    """

    name = "shipped-batched"

    def reset(self, n_streams: int, seconds: float) -> None:
        enc = self.model.encoder
        self.audio = [speechlike(max(seconds, 3), 30 + i) for i in range(n_streams)]
        self.caches = list(enc.get_initial_cache_state(batch_size=n_streams, device=self.device))
        self.hyps: list = [None] * n_streams
        self.mel_pos = [0] * n_streams
        with torch.inference_mode():  # the shorter first step is not what is timed
            self._call(list(range(n_streams)))

    def _window(self, i: int, a: int, b: int) -> np.ndarray:
        lo, hi = self.runner.features.window(a, b)
        audio = self.audio[i]
        if hi > len(audio):  # long timing runs re-read the end: only the shape matters
            lo, hi = lo - (hi - len(audio)), len(audio)
        out = np.zeros(hi - lo, np.float32)
        start = max(lo, 0)
        out[start - lo :] = audio[start:hi]
        return out

    def _call(self, streams: list[int], keep_all: bool = False) -> None:
        first = self.mel_pos[streams[0]] == 0
        pre = 0 if first else self.runner.pre_cache
        spans = [
            (p - pre, p + (self.chunk_first if first else self.chunk))
            for p in (self.mel_pos[i] for i in streams)
        ]
        n = spans[0][1] - spans[0][0]
        windows = np.stack([self._window(i, *span) for i, span in zip(streams, spans, strict=True)])
        mel = self.runner.features.compute(windows, n)
        everyone = streams == list(range(len(self.mel_pos)))
        idx = torch.tensor(streams, device=self.device)
        dims = (1, 1, 0)
        cur = self.caches
        if not everyone:
            cur = [c.index_select(d, idx) for c, d in zip(self.caches, dims, strict=True)]
        hyps = None if first else [self.hyps[i] for i in streams]
        with self._autocast():
            result = self.model.conformer_stream_step(
                processed_signal=mel,
                processed_signal_length=torch.full((len(streams),), n, device=self.device),
                cache_last_channel=cur[0],
                cache_last_time=cur[1],
                cache_last_channel_len=cur[2],
                keep_all_outputs=keep_all,
                previous_hypotheses=hyps,
                drop_extra_pre_encoded=0 if first else self.runner.drop_later,
                return_transcription=True,
            )
        new = [result[2], result[3], result[4]]
        if everyone:
            self.caches = new
        else:
            for c, d, v in zip(self.caches, dims, new, strict=True):
                c.index_copy_(d, idx, v.to(c.dtype))
        for row, i in enumerate(streams):
            hyp = result[5][row]
            if len(hyp.y_sequence) > 64:  # long streams: keep the decoder state, drop old tokens
                hyp.y_sequence = hyp.y_sequence[-8:]
                hyp.timestamp = []
            self.hyps[i] = hyp
            self.mel_pos[i] = spans[row][1]

    def process(self, streams: list[int]) -> None:
        self._call(streams)

    def time_to_final_idle(self, repeats: int) -> float:
        self.reset(1, 6)
        out = []
        with torch.inference_mode():
            for _ in range(repeats):
                self._call([0])
                sync(self.device)
                t0 = time.perf_counter()
                self._call([0], keep_all=True)
                sync(self.device)
                out.append(time.perf_counter() - t0)
        return statistics.median(out)


# ---------------------------------------------------------------- main


def capacity(step_s: dict[int, float], chunk_s: float, budget_s: float | None = None) -> dict:
    """Real-time streams: B x chunk / step at the best B whose step fits ``budget_s``.

    ``budget_s`` defaults to the chunk; a serving target is stricter (160 ms chunks with p99
    steps <= 80 ms leave room for features, decode, jitter and the network).
    """
    budget = chunk_s if budget_s is None else budget_s
    fits = {b: b * chunk_s / t for b, t in step_s.items() if t <= budget}
    if not fits:
        return {"streams": 0.0, "batch": None, "bounded_by_largest_batch": False}
    best = max(fits, key=fits.get)
    return {
        "streams": fits[best],
        "batch": best,
        # If the largest batch measured still fits in a chunk, the true capacity may be higher.
        "bounded_by_largest_batch": best == max(step_s),
        "step_budget_ms": budget * 1000,
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
        "--all-batches",
        action="store_true",
        help="time every batch size, also past the first whose step exceeds a chunk",
    )
    parser.add_argument(
        "--shipped-max-batch",
        type=int,
        default=32,
        help="largest batch timed for 'shipped' (its step time is linear in B)",
    )
    parser.add_argument(
        "--streams", type=int, default=16, help="streams in the paced run (0: no paced run)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the paced run")
    parser.add_argument("--window-s", type=float, default=4.0, help="buffered baseline window")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--step-budget-ms",
        type=float,
        default=None,
        help="longest step that counts as real time for capacity (default: the chunk)",
    )
    parser.add_argument("--blank-bias", type=float, default=8.0)
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--systems",
        default="engine,engine-nemo,shipped-batched,buffered,shipped",
        help=f"comma-separated, from {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--encoder",
        choices=("fast", "nemo"),
        default="fast",
        help="encoder step of the 'engine' system ('engine-nemo' always runs NeMo's)",
    )
    parser.add_argument("--out", default="bench_results/asr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    batches = sorted({int(b) for b in args.batches.split(",")})
    systems = args.systems.split(",")
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; allowed: {','.join(SYSTEMS)}")
    config = EngineConfig(
        model=args.model or f"random:{args.arch}",
        device=args.device,
        dtype=args.dtype,
        chunk_ms=args.chunk_ms,
        max_streams=max(max(batches), args.streams) + 8,
        max_batch=max(max(batches), args.streams),
        cuda_graphs=args.cuda_graphs,
        encoder=args.encoder,
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

    with torch.inference_mode(), _on_device(device):
        # Features and the greedy decoder of the NeMo baselines (no encoder state of its own).
        runner = ModelRunner(model, dataclasses.replace(config, encoder="nemo"), device)
    factories = {
        "engine": lambda: EngineSystem(model, config, "engine"),
        "engine-nemo": lambda: EngineSystem(
            model, dataclasses.replace(config, encoder="nemo"), "engine-nemo"
        ),
        "shipped": lambda: ShippedSystem(runner),
        "shipped-batched": lambda: ShippedBatchedSystem(runner),
        "buffered": lambda: BufferedSystem(runner, args.window_s),
    }
    results: dict[str, dict] = {}
    for name in systems:
        impl = factories[name]()
        logger.info("== %s: step time vs batch", name)
        steps, flops = {}, {}
        for b in batches:
            if name == "shipped" and b > args.shipped_max_batch:
                continue
            steps[b], flops[b] = impl.step_time(b, args.repeats, flops=True)
            logger.info(
                "%s B=%d step %.1f ms, %.2f GFLOP/stream-step",
                name,
                b,
                steps[b] * 1000,
                flops[b] / b / 1e9,
            )
            if steps[b] > chunk_s and not args.all_batches:
                break  # no longer real time: larger batches only get slower
        budget = None if args.step_budget_ms is None else args.step_budget_ms / 1000
        cap = capacity(steps, chunk_s, budget)
        memory = impl.memory_model()
        result = {
            "step_ms": {str(b): t * 1000 for b, t in steps.items()},
            "flops_per_step": {str(b): f for b, f in flops.items()},
            "gflop_per_stream_step": {str(b): f / b / 1e9 for b, f in flops.items()},
            # Analytic: the weights read once per step + every stream's state read and written.
            "est_bytes_per_step": {
                str(b): memory["weight_bytes"] + 2 * b * memory["state_bytes_per_stream"]
                for b in steps
            },
            "memory": memory,
            "capacity": cap,
        }
        if args.streams > 0:
            logger.info(
                "== %s: %d streams paced in real time for %.0f s", name, args.streams, args.seconds
            )
            result.update(impl.paced(args.streams, args.seconds, chunk_s))
            if isinstance(impl, EngineSystem):
                result["time_to_final_idle_ms"] = impl.time_to_final_idle(3) * 1000
        results[name] = result
        impl.close()

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
    for base in ("engine-nemo", "shipped-batched"):
        if "engine" in results and base in results:
            mine, theirs = results["engine"], results[base]
            common = [b for b in mine["step_ms"] if b in theirs["step_ms"]]
            report[f"engine_vs_{base}"] = {
                "step_speedup": {b: theirs["step_ms"][b] / mine["step_ms"][b] for b in common},
                "flop_ratio": {
                    b: theirs["flops_per_step"][b] / mine["flops_per_step"][b]
                    for b in common
                    if mine["flops_per_step"][b]
                },
            }
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
    head = f"{'system':<16}" + "".join(f"B={b:<8}" for b in batches)
    print("\nstep time (ms) to advance B streams by one chunk\n" + head)
    for name, r in results.items():
        print(f"{name:<16}" + "".join(f"{fmt(r['step_ms'].get(str(b))):<10}" for b in batches))
    print("\nGFLOP per stream-step (torch flop counter, whole step)\n" + head)
    for name, r in results.items():
        per = r["gflop_per_stream_step"]
        print(f"{name:<16}" + "".join(f"{fmt(per.get(str(b)), '.2f'):<10}" for b in batches))
    print(
        f"\n{'system':<16}capacity(streams)  at B   chunk p50/p95/p99 (ms)      "
        "time-to-final p50 (ms)"
    )
    for name, r in results.items():
        cap = r["capacity"]
        bound = "+" if cap["bounded_by_largest_batch"] else " "
        at = fmt(cap["batch"], "d") if cap["batch"] else "-"
        line = f"{name:<16}{fmt(cap['streams'], '.0f') + bound:<19}{at:<5}"
        if "chunk_latency_ms" in r:
            lat = r["chunk_latency_ms"]
            line += (
                f"{fmt(lat['p50'])}/{fmt(lat['p95'])}/{fmt(lat['p99']):<18}"
                f"{fmt(r['time_to_final_ms']['p50'])} ({r['time_to_final_ms']['note']})"
            )
        print(line)
        if "time_to_final_idle_ms" in r:
            print(f"{'':<64}{fmt(r['time_to_final_idle_ms'])} (one stream, idle)")
    for base in ("engine-nemo", "shipped-batched"):
        vs = report.get(f"engine_vs_{base}")
        if vs:
            speed = ", ".join(f"B={b}: {x:.2f}x" for b, x in vs["step_speedup"].items())
            flop = ", ".join(f"B={b}: {x:.2f}x" for b, x in vs["flop_ratio"].items())
            print(f"\nengine vs {base}: step faster by {speed}\n  FLOPs fewer by {flop}")
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
