"""Soak and load: many real-time streams, no lag drift, flat memory; the CLI end to end.

The short soak (16 streams, 20 s) runs in CI; the full one (64 streams, 10 minutes, server in
its own process) is marked slow: ``pytest -m slow tests/asr_server/test_load.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from services.asr.engine import EngineConfig, EngineProcess
from services.asr.server import ASRServer, ServerConfig
from tests.asr.conftest import tiny_nemo  # noqa: F401
from tests.asr_server.tiny import speechlike_pcm

ROOT = Path(__file__).resolve().parents[2]


def loadtest_module():
    spec = importlib.util.spec_from_file_location("loadtest_asr", ROOT / "scripts/loadtest_asr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def clips():
    """Three clips of speech-like audio (the tiny random model needs no words)."""
    return [np.frombuffer(speechlike_pcm(s, seed=i), "<i2") for i, s in enumerate((2.5, 3.0, 2))]


def assert_healthy(report: dict, *, max_rss_growth: float = 0.10) -> None:
    assert report["errors"]["count"] == 0, report["errors"]
    assert report["clients"]["completed"] == report["config"]["streams"]
    assert report["ok"], report["why_not_ok"]
    assert report["lag_s"]["drift"] < report["config"]["max_drift_s"]
    assert report["finals"] > 0 and report["time_to_final_s"]["p50"] is not None
    growth = report["server_rss_mb"]["growth"]
    assert growth is not None and growth < max_rss_growth, report["server_rss_mb"]


@pytest.mark.timeout(150)
async def test_short_soak_16_streams_no_drift_and_flat_memory(tiny_nemo):  # noqa: F811
    """The server as deployed: the engine in its own process, 16 real-time streams for 20 s."""
    lt = loadtest_module()
    config = EngineConfig(model=tiny_nemo, device="cpu", dtype="fp32", chunk_ms=160)
    engine = EngineProcess(config, torch_threads=1)
    await engine.start()
    srv = ASRServer(engine, ServerConfig(port=0, idle_timeout=0))
    await srv.start()
    try:
        cfg = lt.TrialConfig(streams=16, duration=20, warmup_s=3)
        report = await lt.run_trial(srv.url, cfg, clips())
        assert_healthy(report)
        # Every stream's slot came back, here and in the engine process.
        assert srv.live_streams == 0
        await asyncio.sleep(1.0)  # the engine's stats arrive every 0.5 s
        assert engine.stats()["slots_in_use"] == 0
    finally:
        await srv.stop()
        await engine.aclose()


@pytest.mark.timeout(240)
def test_loadtest_script_starts_the_cli_server_and_writes_its_reports(tmp_path):
    wav = tmp_path / "speech.wav"
    import wave

    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(speechlike_pcm(3.0))
    result = subprocess.run(
        [sys.executable, "scripts/loadtest_asr.py", "--tiny", "-n", "4", "-t", "5"]
        + ["--warmup", "1", "--wav", str(wav), "--out", str(tmp_path / "out")]
        + ["--client-procs", "2"],  # two client processes, two clients each
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["ok"] and report["finals"] > 0 and report["hardware"]["cpus"]
    assert report["clients"] == {"connected": 4, "completed": 4}
    assert report["config"]["client_procs"] == 2 and report["partials"] > 0
    assert (tmp_path / "out/lag.png").stat().st_size > 10_000
    assert "lag p50" in result.stdout
    log = (tmp_path / "out/server.log").read_text()
    assert "ASR server ready" in log and "Shutting down the ASR server" in log


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_soak_64_streams_10_minutes(tmp_path):
    """Full soak: a tiny-model server process, 64 real-time streams for 10 minutes.

    ``SOAK_STREAMS`` / ``SOAK_SECS`` change the load. The server runs as deployed: the CLI, with
    the engine in its own process.
    """
    lt = loadtest_module()
    streams = int(os.environ.get("SOAK_STREAMS", "64"))
    seconds = float(os.environ.get("SOAK_SECS", "600"))
    model = str(lt.tiny_model_path())
    with lt.ServerProcess(model, log_path=tmp_path / "server.log", torch_threads=1) as server:
        cfg = lt.TrialConfig(streams=streams, duration=seconds, warmup_s=10)
        report = await lt.run_trial(server.url, cfg, clips())
    (tmp_path / "report.json").write_text(json.dumps(report))
    print(lt.table([report]))
    assert_healthy(report)


@pytest.mark.timeout(240)
async def test_cli_server_with_two_front_ends_shares_one_engine(tmp_path):
    """``asr-server --workers 2``: two front-end processes on one port, one engine process."""
    from services.asr.server import ASRClient

    lt = loadtest_module()
    model = str(lt.tiny_model_path())
    log = tmp_path / "server.log"
    with lt.ServerProcess(model, log_path=log, torch_threads=1, workers=2) as server:
        clients = [ASRClient(server.url) for _ in range(16)]
        ready = [await client.connect() for client in clients]
        # The kernel spread the connections over both front ends (16 connections all landing
        # on one of two by hash: p = 3e-5).
        assert {event["front_end"] for event in ready} == {0, 1}
        pcm = speechlike_pcm(1.5)
        for client in clients:
            await client.send_audio(pcm)
        finals = [await asyncio.wait_for(await c.send_finalize(), 60) for c in clients]
        # Same audio, same engine: the same transcript through either front end.
        assert len({f["text"] for f in finals}) == 1 and finals[0]["text"]
        # Whichever front end answers a scrape reports the whole server: both front ends'
        # connections and audio, relayed through the engine process (every 0.5 s).
        base = lt.http_base(server.url)

        async def scrape() -> dict[str, float]:
            status, text = await asyncio.to_thread(lt.http_get, f"{base}/metrics", None, 5.0)
            assert status == 200
            return lt.parse_metrics(text)

        def whole(m: dict[str, float]) -> bool:
            return (
                m.get("asr_front_ends") == 2
                and m["asr_connections_total"] == 16
                and m["asr_streams_live"] == 16
                and m.get('asr_events_total{type="final"}') == 16
            )

        for _ in range(40):  # until both front ends' latest counters went round
            if whole(await scrape()):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.5)  # every relayed snapshot is now newer than the finals
        # New HTTP connections, spread by the kernel: 8 scrapes all on one front end, p = 1/128.
        scrapes = [await scrape() for _ in range(8)]
        assert all(whole(m) for m in scrapes), scrapes
        assert all(m["asr_audio_seconds_total"] == pytest.approx(24.0) for m in scrapes)
        for client in clients:
            await client.close()
    text = log.read_text()
    assert "2 front-end processes" in text and "ASR front end 1 serving" in text
    assert "Shutting down the ASR server" in text


def _alive(pid: int) -> bool:
    """Running (a zombie left for a reaper that never comes counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.mark.timeout(180)
def test_a_killed_load_test_takes_its_server_and_engine_with_it(tmp_path):
    """SIGKILL on the load test (no clean-up of its own runs): its server and engine still go."""
    script = str(ROOT / "scripts/loadtest_asr.py")
    driver_code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('lt', {script!r})\n"
        "lt = importlib.util.module_from_spec(spec); sys.modules['lt'] = lt\n"
        "spec.loader.exec_module(lt)\n"
        "server = lt.ServerProcess(str(lt.tiny_model_path()), torch_threads=1,\n"
        f"    log_path=__import__('pathlib').Path({str(tmp_path / 'server.log')!r}))\n"
        "server.start()\n"
        "print(server.proc.pid, flush=True)\n"
        "__import__('time').sleep(300)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", driver_code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    below: list[int] = []
    try:
        server_pid = int(driver.stdout.readline())
        sys.path.insert(0, str(ROOT / "scripts"))
        import proc_cpu

        below += proc_cpu.process_tree(server_pid)  # the server and its engine process
        assert len(below) >= 2, "the server's engine process was not found"
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in below if _alive(pid)], (tmp_path / "server.log").read_text()
    finally:
        driver.kill()
        for pid in below:  # what a failure left behind
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
