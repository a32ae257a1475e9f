#!/usr/bin/env python3
"""Load test of the ASR server: N clients stream real speech at real-time pace.

Each client plays utterances (real recorded speech, looped, each client at its own phase) in
20 ms messages paced by the wall clock, asks for a final 0.25 s after each utterance ends (as a
bot does at the VAD stop), then resets. It measures:

- per-chunk lag: when a partial arrives, how long ago the last audio it covers was sent
  (``now - time_sent(audio_end_s)``; includes waiting for the model's look-ahead audio), and its
  drift over the run (a server that cannot keep up shows a lag that grows without bound);
- time to final: end of speech -> final received; finalize round trip;
- errors and disconnects; client send lateness (a saturated load generator shows here);
- server memory (RSS), live streams, engine batch sizes and step latency, scraped from /metrics.

Outputs a JSON report, a PNG and a table. ``--find-max`` ramps N (doubling, then bisecting) to
the largest N with no drift.

Usage::

    python scripts/loadtest_asr.py --tiny -n 16 -t 30              # starts a tiny-model server
    python scripts/loadtest_asr.py --url ws://127.0.0.1:8765/v1/stream -n 64 -t 600
    python scripts/loadtest_asr.py --tiny --find-max -t 20

Speech comes from the cache that ``scripts/fetch_speech.py`` fills (Asterisk prompts and CMU
ARCTIC); with ``--fetch`` the ARCTIC clip is fetched if the cache is empty; without any, synthetic
audio is used (with a warning).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib.util
import json
import math
import os
import pickle
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.asr.server.client import ASRClient, http_get  # noqa: E402
from services.lifetime import on_lasting_thread  # noqa: E402

SAMPLE_RATE = 16000
CACHE_DIR = Path(os.environ.get("VOICE_AGENT_CACHE", "~/.cache/voice-agent")).expanduser()


# ---------------------------------------------------------------- speech


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        frames = wav.readframes(wav.getnframes())
    if width != 2:
        raise ValueError(f"{path}: 16-bit WAV expected")
    audio = np.frombuffer(frames, "<i2").reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        positions = np.arange(0, len(audio), rate / SAMPLE_RATE)
        audio = np.interp(positions, np.arange(len(audio)), audio)
    return np.clip(audio, -32768, 32767).astype("<i2")


def _fetch_speech_module():
    spec = importlib.util.spec_from_file_location("fetch_speech", ROOT / "scripts/fetch_speech.py")
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_speech(
    wav: str | None = None, *, fetch: bool = False, limit: int = 40
) -> tuple[list[np.ndarray], str]:
    """Utterances to play (int16 arrays) and where they came from.

    Order: ``wav`` if given; the fetch_speech cache (up to ``limit`` utterances of 1-8 s); with
    ``fetch``, the CMU ARCTIC clip fetched into that cache; else synthetic noise bursts.
    """
    if wav:
        return [_read_wav(Path(wav))], wav
    module = _fetch_speech_module()
    entries: list[dict] = []
    if module is not None:
        dest = Path(module.DEFAULT_DIR).expanduser()
        entries = module.load_manifest(dest)
        if not entries and fetch:
            try:
                entries = module.fetch_arctic(dest)
                for entry in entries:
                    entry["path"] = str(dest / entry["path"])
            except Exception as exc:  # no network: fall through to synthetic
                print(f"warning: could not fetch speech: {exc}", file=sys.stderr)
    usable = [e for e in entries if 1.0 <= float(e.get("duration_s", 0)) <= 8.0][:limit]
    if usable:
        clips = [_read_wav(Path(e["path"])) for e in usable]
        seconds = sum(len(c) for c in clips) / SAMPLE_RATE
        return clips, f"{len(clips)} real utterances ({seconds:.0f} s) from {usable[0]['source']}"
    print(
        "warning: no recorded speech found (run scripts/fetch_speech.py, or pass --fetch or "
        "--wav); using synthetic audio",
        file=sys.stderr,
    )
    rng = np.random.default_rng(0)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    noise = rng.standard_normal(t.size) * 3000 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return [noise.astype("<i2")], "synthetic noise bursts (no recorded speech available)"


# ---------------------------------------------------------------- measuring


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None when empty."""
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data) - 1, max(0, math.ceil(q / 100 * len(data)) - 1))]


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class TrialConfig:
    """One load level."""

    streams: int
    duration: float = 20.0
    send_ms: int = 20
    warmup_s: float = 3.0
    gap_s: float = 1.0  # silence after each utterance
    finalize_after_s: float = 0.25  # into the silence, as a bot's VAD stop
    max_drift_s: float = 0.25
    token: str | None = None
    # Client processes (one event loop drives a few hundred 20 ms streams at most).
    client_procs: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> TrialConfig:
        """The load level of the command line's options (``--streams`` etc.); ``overrides`` win.

        ``streams`` is ``args.streams`` unless it is among ``overrides``.
        """
        options = {
            "duration": args.duration,
            "send_ms": args.send_ms,
            "warmup_s": args.warmup,
            "max_drift_s": args.max_drift,
            "token": args.token,
            "client_procs": max(1, args.client_procs),
        }
        if "streams" not in overrides:
            options["streams"] = args.streams
        return cls(**(options | overrides))


@dataclass
class ClientStats:
    lags: list[tuple[float, float]] = field(default_factory=list)  # (t since start, lag)
    server_latency: list[float] = field(default_factory=list)
    ttf: list[float] = field(default_factory=list)  # speech end -> final received
    finalize_rtt: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    partials: int = 0
    finals: int = 0
    connected: bool = False
    completed: bool = False


def _programme(index: int, cfg: TrialConfig, speech: list[np.ndarray], per_msg: int):
    """Client ``index``'s messages, made as they are sent: (PCM bytes, ends an utterance).

    Utterances in a per-client order from a random start, each followed by ``gap_s`` of
    silence, for ``cfg.duration`` seconds. A generator, so a 10-minute trial of 64 clients does
    not hold two million messages in memory before it starts.
    """
    rng = np.random.default_rng(index)
    gap = np.zeros(int(cfg.gap_s * SAMPLE_RATE), "<i2")
    order = rng.permutation(len(speech))
    clip = speech[order[0]][int(rng.integers(0, max(1, len(speech[order[0]])))) :]
    remaining = int(cfg.duration * SAMPLE_RATE) // per_msg
    k = 0
    while True:
        for start in range(0, len(clip), per_msg):
            if remaining == 0:
                return
            remaining -= 1
            yield clip[start : start + per_msg].tobytes(), start + per_msg >= len(clip)
        for start in range(0, len(gap), per_msg):
            if remaining == 0:
                return
            remaining -= 1
            yield gap[start : start + per_msg].tobytes(), False
        k += 1
        clip = speech[order[k % len(order)]]


async def _client(
    index: int, url: str, cfg: TrialConfig, speech: list[np.ndarray], t0: float
) -> ClientStats:
    stats = ClientStats()
    per_msg = SAMPLE_RATE * cfg.send_ms // 1000
    # Message k carried samples up to sent_ends[k] (clips end mid-message, so messages differ in
    # length) and was sent at send_times[k].
    sent_ends: list[int] = []
    send_times: list[float] = []

    def sent_at(audio_s: float) -> float | None:
        k = bisect.bisect_left(sent_ends, int(round(audio_s * SAMPLE_RATE)))
        return send_times[k] if k < len(send_times) else None

    def on_event(event: dict[str, Any]) -> None:
        now = time.perf_counter()
        kind = event.get("type")
        if kind == "partial":
            stats.partials += 1
            sent = sent_at(float(event["audio_end_s"]))
            if sent is not None:
                stats.lags.append((now - t0, now - sent))
            stats.server_latency.append(float(event.get("latency_s") or 0.0))
        elif kind == "error":
            stats.errors.append(f"{event.get('code')}: {event.get('message')}")

    client = ASRClient(url, token=cfg.token, on_event=on_event, open_timeout=30)
    try:
        await client.connect()
    except Exception as exc:
        stats.errors.append(f"connect: {exc}")
        return stats
    stats.connected = True

    pieces = _programme(index, cfg, speech, per_msg)

    finals: set[asyncio.Task] = set()

    async def finish(requested: float, speech_end: float) -> None:
        try:
            future = await client.send_finalize()
            await asyncio.wait_for(future, 30)
            now = time.perf_counter()
            stats.finals += 1
            stats.ttf.append(now - speech_end)
            stats.finalize_rtt.append(now - requested)
            await client.reset()
        except Exception as exc:
            stats.errors.append(f"finalize: {type(exc).__name__}: {exc}")

    start = time.perf_counter()
    speech_end: float | None = None
    finalize_at: int | None = None
    step = cfg.send_ms / 1000
    try:
        for k, (message, ends) in enumerate(pieces):
            due = start + k * step
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            stats.lateness.append(max(0.0, now - due))
            await client.send_audio(message)
            sent_ends.append((sent_ends[-1] if sent_ends else 0) + len(message) // 2)
            send_times.append(now)
            if ends:
                speech_end = now
                finalize_at = k + max(1, round(cfg.finalize_after_s / step))
            if finalize_at is not None and k >= finalize_at and speech_end is not None:
                task = asyncio.create_task(finish(time.perf_counter(), speech_end))
                finals.add(task)
                task.add_done_callback(finals.discard)
                finalize_at = speech_end = None
        # Let the last partials arrive, then close.
        await asyncio.sleep(0.5)
        if finals:
            await asyncio.wait(finals, timeout=10)
        stats.completed = not client.closed.is_set()
        if client.closed.is_set():
            stats.errors.append(f"closed by server: {client.close_code} {client.close_reason}")
    except ConnectionError as exc:
        stats.errors.append(f"send: {exc}")
    finally:
        await client.close()
    return stats


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name{labels}: value} (enough for our own server's output)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            found[name] = float(value)
    return found


def http_base(url: str) -> str:
    scheme, rest = url.split("://", 1)
    host = rest.split("/", 1)[0].split("?", 1)[0]
    return f"{'https' if scheme == 'wss' else 'http'}://{host}"


async def _poll_metrics(
    url: str, token: str | None, t0: float, out: list[dict], stop: asyncio.Event
):
    base = http_base(url)
    while not stop.is_set():
        try:
            status, text = await asyncio.to_thread(http_get, f"{base}/metrics", token, 5.0)
            if status == 200:
                m = parse_metrics(text)
                out.append(
                    {
                        "t": round(time.perf_counter() - t0, 2),
                        # The server with its engine process (older servers: one process).
                        "rss_mb": round(
                            m.get(
                                "asr_server_resident_memory_bytes",
                                m.get("process_resident_memory_bytes", 0),
                            )
                            / 2**20,
                            1,
                        ),
                        "live_streams": m.get("asr_streams_live"),
                        "batch_mean": m.get("asr_engine_recent_batch_sizes_mean"),
                        "step_p50_ms": m.get("asr_engine_step_latency_ms_p50"),
                        "step_p99_ms": m.get("asr_engine_step_latency_ms_p99"),
                        # Engine-side per-chunk lag (audio complete -> step done), every step,
                        # text or not; engines without it leave None.
                        "chunk_p99_ms": m.get("asr_engine_chunk_latency_ms_p99"),
                    }
                )
        except OSError:
            pass
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return 0.0
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if np.ptp(xs) == 0:
        return 0.0
    return float(np.polyfit(xs, ys, 1)[0])


async def _run_clients(
    url: str, cfg: TrialConfig, speech: list[np.ndarray], t0: float, indices: Iterable[int]
) -> list[ClientStats]:
    # Stagger connections over 0.5 s so they do not all send on the same tick.
    async def staggered(i: int) -> ClientStats:
        await asyncio.sleep(0.5 * i / max(1, cfg.streams))
        return await _client(i, url, cfg, speech, t0)

    return list(await asyncio.gather(*(staggered(i) for i in indices)))


async def _run_sharded(
    url: str, cfg: TrialConfig, speech: list[np.ndarray], t0: float
) -> list[ClientStats]:
    """``cfg.client_procs`` processes of this script, process k driving clients k, k+P, ...

    They share the trial's clock through the wall clock (same host), so their lag timelines
    line up with this process's metrics samples.
    """
    shards = cfg.client_procs
    folder = Path(tempfile.mkdtemp(prefix="loadtest-shards-"))
    try:
        np.savez(folder / "speech.npz", *speech)
        t0_wall = time.time() - (time.perf_counter() - t0)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, str(Path(__file__).resolve()), "--url", url,
                "--shard", f"{k}/{shards}", "--shard-dir", str(folder),
                "--shard-t0", repr(t0_wall), "--shard-config", json.dumps(asdict(cfg)),
                cwd=ROOT,
            )
            for k in range(shards)
        ]  # fmt: skip
        codes = [await proc.wait() for proc in procs]
        results: list[ClientStats] = []
        for k, code in enumerate(codes):
            path = folder / f"shard{k}.pkl"
            if code != 0 or not path.is_file():
                count = len(range(k, cfg.streams, shards))
                failed = ClientStats(errors=[f"client process {k} exited with {code}"])
                results += [failed] + [ClientStats() for _ in range(count - 1)]
                continue
            results += [ClientStats(**fields) for fields in pickle.loads(path.read_bytes())]
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _shard_main(args: argparse.Namespace) -> int:
    """One client process of ``_run_sharded``: run its clients, write their stats."""
    k, shards = (int(x) for x in args.shard.split("/"))
    folder = Path(args.shard_dir)
    with np.load(folder / "speech.npz") as data:
        speech = [data[name] for name in data.files]
    cfg = TrialConfig(**json.loads(args.shard_config))
    t0 = time.perf_counter() - (time.time() - float(args.shard_t0))
    results = asyncio.run(_run_clients(args.url, cfg, speech, t0, range(k, cfg.streams, shards)))
    (folder / f"shard{k}.pkl").write_bytes(pickle.dumps([asdict(r) for r in results]))
    return 0


async def run_trial(
    url: str, cfg: TrialConfig, speech: list[np.ndarray], *, log=print
) -> dict[str, Any]:
    """Run one load level and return its report (see the module docstring)."""
    t0 = time.perf_counter()
    samples: list[dict] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll_metrics(url, cfg.token, t0, samples, stop))

    if cfg.client_procs > 1:
        results = await _run_sharded(url, cfg, speech, t0)
    else:
        results = await _run_clients(url, cfg, speech, t0, range(cfg.streams))
    stop.set()
    await poller
    wall = time.perf_counter() - t0

    lags = sorted((t, lag) for r in results for t, lag in r.lags)
    measured = [(t, lag) for t, lag in lags if t >= cfg.warmup_s]
    values = [lag for _, lag in measured]
    end = max((t for t, _ in measured), default=cfg.warmup_s)
    span = max(1e-9, end - cfg.warmup_s)
    first = [lag for t, lag in measured if t < cfg.warmup_s + span / 4]
    last = [lag for t, lag in measured if t >= end - span / 4]
    drift = (statistics.median(last) - statistics.median(first)) if first and last else None
    slope = _slope(measured)
    timeline: dict[int, list[float]] = {}
    for t, lag in lags:
        timeline.setdefault(int(t), []).append(lag)
    errors = [e for r in results for e in r.errors]
    lateness = [x for r in results for x in r.lateness]
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] and s["t"] >= cfg.warmup_s]
    rss_growth = (rss[-1] - rss[0]) / rss[0] if len(rss) >= 2 and rss[0] else None
    connected = sum(r.connected for r in results)
    completed = sum(r.completed for r in results)
    reasons = []
    if errors:
        reasons.append(f"{len(errors)} errors")
    if completed < cfg.streams:
        reasons.append(f"{cfg.streams - completed} clients did not complete")
    if not values:
        reasons.append("no lag samples")
    if drift is not None and drift > cfg.max_drift_s:
        reasons.append(f"lag drift {drift:.3f} s > {cfg.max_drift_s} s")
    # The fitted trend over the run must stay under the allowed drift too (a slow, steady
    # backlog can hide between two quarter medians on a noisy machine).
    if slope * span > cfg.max_drift_s:
        reasons.append(
            f"lag trend {slope:.4f} s/s adds {slope * span:.3f} s over the run > "
            f"{cfg.max_drift_s} s"
        )
    report = {
        "config": asdict(cfg) | {"token": bool(cfg.token)},
        "wall_s": round(wall, 1),
        "clients": {"connected": connected, "completed": completed},
        "partials": sum(r.partials for r in results),
        "finals": sum(r.finals for r in results),
        "lag_s": {
            "p50": _r(pct(values, 50)),
            "p95": _r(pct(values, 95)),
            "p99": _r(pct(values, 99)),
            "max": _r(max(values, default=None)),
            "drift": _r(drift),
            "slope_s_per_s": _r(slope, 6),
        },
        "server_latency_s": {
            q: _r(pct([x for r in results for x in r.server_latency], int(q[1:])))
            for q in ("p50", "p95", "p99")
        },
        "time_to_final_s": {
            q: _r(pct([x for r in results for x in r.ttf], int(q[1:])))
            for q in ("p50", "p95", "p99")
        },
        "finalize_rtt_s": {
            q: _r(pct([x for r in results for x in r.finalize_rtt], int(q[1:])))
            for q in ("p50", "p95", "p99")
        },
        "send_lateness_s": {"p50": _r(pct(lateness, 50)), "p99": _r(pct(lateness, 99))},
        "errors": {"count": len(errors), "first": errors[:10]},
        "server_rss_mb": {
            "start": rss[0] if rss else None,
            "end": rss[-1] if rss else None,
            "max": max(rss) if rss else None,
            "growth": _r(rss_growth),
        },
        "timeline": [
            {
                "t": t,
                "n": len(v),
                "p50": _r(pct(v, 50)),
                "p95": _r(pct(v, 95)),
                "p99": _r(pct(v, 99)),
            }
            for t, v in sorted(timeline.items())
        ],
        "server_samples": samples,
        "ok": not reasons,
        "why_not_ok": reasons,
    }
    log(
        f"N={cfg.streams:4d}  lag p50/p95/p99 {_fmt(report['lag_s']['p50'])}/"
        f"{_fmt(report['lag_s']['p95'])}/{_fmt(report['lag_s']['p99'])} s  drift "
        f"{_fmt(drift)} s  ttf p50 {_fmt(report['time_to_final_s']['p50'])} s  errors "
        f"{len(errors)}  rss {report['server_rss_mb']['start']}->{report['server_rss_mb']['end']} "
        f"MB  {'OK' if not reasons else 'FAIL: ' + '; '.join(reasons)}"
    )
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


async def wait_idle(url: str, token: str | None, timeout: float = 30.0) -> None:
    """Wait until the server reports no live streams (between trials)."""
    base = http_base(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            status, text = await asyncio.to_thread(http_get, f"{base}/metrics", token, 5.0)
            if status == 200 and parse_metrics(text).get("asr_streams_live", 1) == 0:
                return
        await asyncio.sleep(0.5)


async def find_max(
    url: str,
    base: TrialConfig,
    speech: list[np.ndarray],
    *,
    start: int,
    limit: int,
    log=print,
    restart: Callable[[], Awaitable[str]] | None = None,
) -> dict[str, Any]:
    """Largest N with no drift: double from ``start`` until a failure, then bisect.

    ``restart`` (when the server is ours) gives a fresh server after a failed trial, so an
    overloaded engine's backlog does not spill into the next trial; it returns the new URL.
    """
    trials: list[dict] = []
    current = url

    async def trial(n: int) -> bool:
        nonlocal current
        await wait_idle(current, base.token)
        cfg = TrialConfig(**(asdict(base) | {"streams": n}))
        report = await run_trial(current, cfg, speech, log=log)
        trials.append(report)
        if not report["ok"] and restart is not None:
            log("restarting the server after a failed trial")
            current = await restart()
        return report["ok"]

    good, bad, n = 0, None, start
    while n <= limit:
        if await trial(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad is not None:
        while bad - good > max(1, int(good * 0.1)):
            mid = (good + bad) // 2
            if await trial(mid):
                good = mid
            else:
                bad = mid
    best = next((t for t in trials if t["config"]["streams"] == good and t["ok"]), None)
    return {
        "max_streams_no_drift": good,
        "first_failing": bad,
        "p99_lag_at_max_s": best["lag_s"]["p99"] if best else None,
        "trials": trials,
    }


# ---------------------------------------------------------------- server subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_model_path() -> Path:
    """A cached tiny random-weight model (built once in a subprocess: NeMo stays out of here).

    Same recipe as the engine tests' ``tiny_nemo`` (tests/asr/conftest.py): the joint re-drawn
    and blank biased to +3, so it emits ~20 characters per second of audio, about what a real
    model does on speech (a model emitting on every frame would inflate the decoder's work).
    """
    path = CACHE_DIR / "loadtest" / "tiny-v2.nemo"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        code = "\n".join(
            [
                "import sys, torch",
                "from services.asr.engine.arch import build_model",
                "m = build_model('tiny', seed=0)",
                "with torch.no_grad():",
                "    out = m.joint.joint_net[-1]",
                "    torch.nn.init.normal_(out.weight, std=1.0)",
                "    out.bias.zero_()",
                "    out.bias[m.decoder.blank_idx] = 3.0",
                "    m.joint.enc.weight.mul_(3.0)",
                "    m.joint.pred.weight.mul_(3.0)",
                "m.save_to(sys.argv[1])",
            ]
        )
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True)
    return path


class ServerProcess:
    """``voice-agent asr-server`` in a subprocess, on a free loopback port."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "cpu",
        dtype: str = "fp32",
        chunk_ms: int = 160,
        max_streams: int = 1024,
        token: str | None = None,
        log_path: Path | None = None,
        torch_threads: int | None = None,
        workers: int = 1,
    ):
        self.port = free_port()
        self.token = token
        # Not `python -m agent.cli`: run as __main__, its EXTRA_COMMANDS is a second copy. The
        # server dies with this process, however it dies (the server's own children die with
        # the server): a crashed or killed load test leaves no server running under the next.
        entry = (
            "import sys; from services.lifetime import die_with_parent; "
            f"die_with_parent({os.getpid()}); from agent.cli import main; sys.exit(main())"
        )
        self.args = [
            sys.executable, "-c", entry, "asr-server", "--profile", "cpu",
            "--env-file", os.devnull, "--model", model, "--device", device, "--dtype", dtype,
            "--chunk-ms", str(chunk_ms), "--port", str(self.port),
            "--max-streams", str(max_streams),
            "--idle-timeout", "0", "--max-message-bytes", str(1 << 20),
        ]  # fmt: skip
        if token:
            self.args += ["--token", token]
        if torch_threads:
            self.args += ["--torch-threads", str(torch_threads)]
        if workers > 1:
            self.args += ["--workers", str(workers)]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def start(self, timeout: float = 300.0) -> None:
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # From a thread that lives as long as this process: the kernel's parent-death signal
        # follows the thread that forked (restart() runs on a worker thread).
        self.proc = on_lasting_thread(
            lambda: subprocess.Popen(self.args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"asr-server exited with {self.proc.returncode} (see {self.log_path})"
                )
            with contextlib.suppress(OSError):
                if http_get(f"http://127.0.0.1:{self.port}/ready", timeout=1)[0] == 200:
                    return
            time.sleep(0.5)
        raise TimeoutError("asr-server did not become ready")

    def restart(self) -> str:
        """Stop, start again on a new port, and return the new URL."""
        self.stop()
        self.port = free_port()
        self.args[self.args.index("--port") + 1] = str(self.port)
        self.start()
        return self.url

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- output


def write_png(report: dict[str, Any], path: Path) -> Path | None:
    """Lag percentiles, server RSS and engine step latency over time (and vs N for find-max)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
        return None
    trials = report.get("trials") or [report]
    finding = "max_streams_no_drift" in report
    fig, axes = plt.subplots(3 + finding, 1, figsize=(10, 10 + 3 * finding), squeeze=False)
    axes = axes[:, 0]
    for i, trial in enumerate(trials):
        n = trial["config"]["streams"]
        color = f"C{i % 10}"  # one color per trial in every panel
        tl = trial["timeline"]
        times = [p["t"] for p in tl]
        axes[0].plot(times, [p["p99"] for p in tl], color=color, label=f"N={n} p99")
        if not finding:
            axes[0].plot(times, [p["p50"] for p in tl], color="C1", label=f"N={n} p50")
            axes[0].plot(times, [p["p95"] for p in tl], color="C2", label=f"N={n} p95")
        ss = trial["server_samples"]
        stamps = [s["t"] for s in ss]
        axes[1].plot(stamps, [s["rss_mb"] for s in ss], color=color, label=f"N={n}")
        axes[2].plot(
            stamps, [s["step_p99_ms"] or 0 for s in ss], color=color, label=f"N={n} step p99"
        )
        if any(s.get("chunk_p99_ms") for s in ss):
            axes[2].plot(
                stamps,
                [s.get("chunk_p99_ms") or 0 for s in ss],
                color=color,
                ls="--",
                label=f"N={n} chunk lag p99",
            )
    axes[0].set_ylabel("lag (s)")
    axes[0].set_title("per-chunk lag: partial received - audio it covers was sent")
    axes[1].set_ylabel("server RSS (MB)")
    axes[2].set_ylabel("engine p99 (ms)")
    axes[2].set_xlabel("time (s)")
    for ax in axes[:3]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=3)
    if finding:
        ns = [t["config"]["streams"] for t in trials]
        axes[3].scatter(ns, [t["lag_s"]["p99"] or 0 for t in trials], label="p99 lag")
        axes[3].scatter(ns, [t["lag_s"]["drift"] or 0 for t in trials], label="drift", marker="x")
        axes[3].axvline(report["max_streams_no_drift"], color="green", ls="--", label="max N")
        axes[3].set_xlabel("streams")
        axes[3].set_ylabel("seconds")
        axes[3].legend()
        axes[3].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(trials: list[dict]) -> str:
    """Plain table of every trial."""
    head = (
        f"{'N':>5} {'lag p50':>8} {'p95':>7} {'p99':>7} {'drift':>7} {'slope':>8} "
        f"{'ttf p50':>8} {'ttf p99':>8} {'step p99':>9} {'batch':>6} {'err':>4} "
        f"{'rss MB':>13} {'late p99':>8}  ok"
    )
    rows = [head, "-" * len(head)]
    for t in trials:
        lag, ttf = t["lag_s"], t["time_to_final_s"]
        ss = [s for s in t["server_samples"] if s["step_p99_ms"]]
        step = max((s["step_p99_ms"] for s in ss), default=None)
        batch = statistics.mean(s["batch_mean"] for s in ss if s["batch_mean"]) if ss else None
        rss = t["server_rss_mb"]
        rows.append(
            f"{t['config']['streams']:>5} {_fmt(lag['p50']):>8} {_fmt(lag['p95']):>7} "
            f"{_fmt(lag['p99']):>7} {_fmt(lag['drift']):>7} {lag['slope_s_per_s']:>8.4f} "
            f"{_fmt(ttf['p50']):>8} {_fmt(ttf['p99']):>8} "
            f"{(f'{step:.0f} ms' if step else '-'):>9} {(f'{batch:.1f}' if batch else '-'):>6} "
            f"{t['errors']['count']:>4} {str(rss['start']) + '->' + str(rss['end']):>13} "
            f"{_fmt(t['send_lateness_s']['p99']):>8}  {'yes' if t['ok'] else 'NO'}"
        )
    return "\n".join(rows)


def hardware() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="an ASR server's ws://.../v1/stream")
    target.add_argument("--tiny", action="store_true", help="start a server on the tiny test model")
    target.add_argument("--model", help="start a server on this model (.nemo or hub id)")
    parser.add_argument("--token", default=os.environ.get("VOICE_AGENT_ASR_TOKEN"))
    parser.add_argument("-n", "--streams", type=int, default=16)
    parser.add_argument("-t", "--duration", type=float, default=30.0, help="seconds per trial")
    parser.add_argument("--send-ms", type=int, default=20, help="audio per message (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out of the stats")
    parser.add_argument(
        "--max-drift",
        type=float,
        default=0.25,
        help="largest lag growth over a trial that counts as no drift, seconds (default 0.25)",
    )
    parser.add_argument(
        "--find-max", action="store_true", help="ramp N to the largest without drift"
    )
    parser.add_argument("--start", type=int, default=8, help="first N of --find-max")
    parser.add_argument("--limit", type=int, default=1024, help="largest N --find-max tries")
    parser.add_argument("--wav", help="a 16-bit WAV to play instead of the speech cache")
    parser.add_argument("--fetch", action="store_true", help="fetch CMU ARCTIC if no speech cached")
    parser.add_argument("--device", default="cpu", help="server device (with --tiny/--model)")
    parser.add_argument("--dtype", default="fp32", help="server dtype (with --tiny/--model)")
    parser.add_argument(
        "--chunk-ms", type=int, default=160, help="server chunk (with --tiny/--model)"
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="torch threads of the server (with --tiny/--model; default 1 on cpu)",
    )
    parser.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="front-end processes of the server (with --tiny/--model; asr-server --workers)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="client processes (one drives a few hundred streams; use more for GPU servers)",
    )
    parser.add_argument("--out", default=None, help="output folder (default loadtest-out/<time>)")
    for internal in ("--shard", "--shard-dir", "--shard-t0", "--shard-config"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shard:
        return _shard_main(args)

    out = Path(args.out or f"loadtest-out/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    speech, source = load_speech(args.wav, fetch=args.fetch)
    print(f"speech: {source}")
    base = TrialConfig.from_args(args)
    server: ServerProcess | None = None
    url = args.url
    # A plain `kill` must still stop the server we started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not url:
        model = str(tiny_model_path()) if args.tiny else args.model
        server = ServerProcess(
            model,
            device=args.device,
            dtype=args.dtype,
            chunk_ms=args.chunk_ms,
            max_streams=max(args.limit, args.streams),
            token=args.token,
            log_path=out / "server.log",
            torch_threads=args.server_threads or (1 if args.device == "cpu" else None),
            workers=args.server_workers,
        )
        print(f"starting asr-server on {model} ({args.device}, {args.dtype}) ...")
        server.start()
        url = server.url
    try:
        hw = hardware()
        if args.find_max:
            restart = (lambda: asyncio.to_thread(server.restart)) if server else None
            report = asyncio.run(
                find_max(url, base, speech, start=args.start, limit=args.limit, restart=restart)
            )
            trials = report["trials"]
        else:
            report = asyncio.run(run_trial(url, base, speech))
            trials = [report]
    finally:
        if server is not None:
            server.stop()
    report = {
        "target": url,
        "model": "tiny" if args.tiny else (args.model or "remote"),
        "speech": source,
        "hardware": hw,
        **report,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    png = write_png(report, out / "lag.png")
    print()
    print(table(trials))
    if args.find_max:
        print(
            f"\nlargest N with no drift: {report['max_streams_no_drift']} "
            f"(p99 lag {_fmt(report['p99_lag_at_max_s'])} s); first failing N: "
            f"{report['first_failing']}"
        )
    print(f"\nreport: {out / 'report.json'}" + (f", plot: {png}" if png else ""))
    return 0 if (report.get("ok", True) and report.get("max_streams_no_drift", 1)) else 1


if __name__ == "__main__":
    sys.exit(main())
