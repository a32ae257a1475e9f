"""The nemotron and remote STT builders: config -> service, prewarm, doctor checks."""

from __future__ import annotations

import asyncio
import os

import pytest

from agent.config import load_config
from pipelines.registry import resolve
from services.asr.nemotron_stt import NemotronSTTService
from services.asr.remote_stt import RemoteNemotronSTTService

pytestmark = pytest.mark.timeout(90)


def settings_with(**stt):
    overrides = {f"stt.{key}": value for key, value in stt.items()}
    return load_config(
        None, profile="cpu", overrides=overrides, env={}, dotenv_path=None, cuda_available=False
    ).settings


def test_remote_backend_from_config():
    settings = settings_with(
        backend="remote",
        server_url="ws://10.0.0.5:9000/v1/stream",
        server_token="tok",
        replay_secs=7.5,
    )
    service = resolve("stt", settings.stt.backend)(settings)
    assert isinstance(service, RemoteNemotronSTTService)
    assert service._url == "ws://10.0.0.5:9000/v1/stream" and service._token == "tok"
    assert service.replay_secs == 7.5


def test_nemotron_backend_uses_fp32_on_cpu(tiny_nemo):
    from pipelines.backends import stt_nemotron

    settings = settings_with(backend="nemotron", model=str(tiny_nemo), device="cpu", dtype="bf16")
    config = stt_nemotron.engine_config(settings)
    assert (config.model, config.device, config.dtype) == (str(tiny_nemo), "cpu", "fp32")
    service = resolve("stt", "nemotron")(settings)
    assert isinstance(service, NemotronSTTService) and service.engine is None  # loaded at start


def test_prewarm_loads_the_shared_engine_and_measures_ttfs(tiny_nemo):
    from pipelines.backends import stt_nemotron
    from services.asr.engine import get_engine

    settings = settings_with(
        backend="nemotron", model=str(tiny_nemo), device="cpu", engine_process=False
    )
    stt_nemotron.prewarm(settings)
    engine = get_engine(stt_nemotron.engine_config(settings))
    try:
        service = stt_nemotron.build(settings)
        assert 0.2 < service._ttfs_p99_latency < 5  # VAD stop_secs + a measured final
        checks = stt_nemotron.checks(settings)
        assert all(c.ok for c in checks if c.required), [c for c in checks if not c.ok]
    finally:
        engine.shutdown()


async def test_prewarm_loads_the_engine_process_that_sessions_attach_to(tiny_nemo):
    from pipecat.frames.frames import (
        TranscriptionFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )

    from pipelines.backends import stt_nemotron
    from services.asr.engine import EngineProcess
    from services.asr.engine.process import _prespawned
    from tests.asr_server.tiny import speechlike_pcm
    from tests.stt.harness import LivePipeline

    settings = settings_with(backend="nemotron", model=str(tiny_nemo), device="cpu")
    assert settings.stt.engine_process  # the default
    # At start-up, before any event loop: the child loads the model, prewarm waits for it.
    await asyncio.to_thread(stt_nemotron.prewarm, settings)
    spawned = _prespawned[stt_nemotron.engine_config(settings)]
    assert isinstance(spawned, EngineProcess) and spawned._first_ops is not None
    service = stt_nemotron.build(settings)
    try:
        async with LivePipeline([service]) as live:  # attaches at once: no model load here
            assert service.engine is spawned and spawned.pid != os.getpid()
            await live.send(VADUserStartedSpeakingFrame())
            await live.send_audio(speechlike_pcm(1.0))
            await live.send(VADUserStoppedSpeakingFrame(stop_secs=0.2))
            assert await live.wait_for(lambda: service.finals_pushed == 1, timeout=30)
        finals = [f for f in live.down.frames if isinstance(f, TranscriptionFrame)]
        assert finals and finals[0].finalized and finals[0].text
    finally:
        await spawned.aclose()


def test_prewarm_fails_at_start_up_when_the_engine_process_cannot_load(tmp_path):
    from pipelines.backends import stt_nemotron
    from pipelines.checks import StartupError
    from services.asr.engine.process import EngineProcessError, _prespawned

    missing = tmp_path / "missing.nemo"
    settings = settings_with(backend="nemotron", model=str(missing), device="cpu")
    # The CLI prints a StartupError as one message with its fix (tests/lifecycle).
    with pytest.raises(StartupError, match="failed to start.*missing.nemo") as info:
        stt_nemotron.prewarm(settings)
    assert isinstance(info.value.__cause__, EngineProcessError)
    # A session would not attach to it: it starts a new process instead.
    assert _prespawned.pop(stt_nemotron.engine_config(settings)).is_shutdown


async def test_remote_checks_and_prewarm(start_server):
    from pipelines.backends import stt_remote

    srv = await start_server(token="tok")
    good = settings_with(
        backend="remote", server_url=f"ws://127.0.0.1:{srv.port}", server_token="tok"
    )
    checks = await asyncio.to_thread(stt_remote.checks, good)
    assert [c.ok for c in checks] == [True, True], checks
    bad = settings_with(backend="remote", server_url=f"ws://127.0.0.1:{srv.port}", server_token="x")
    checks = await asyncio.to_thread(stt_remote.checks, bad)
    assert checks[1].ok is False and "401" in checks[1].detail
    await asyncio.to_thread(stt_remote.prewarm, good)
    await srv.stop()
    checks = await asyncio.to_thread(stt_remote.checks, good)
    assert len(checks) == 1 and not checks[0].ok and "asr-server" in checks[0].fix
