"""EngineProcess: the tiny engine in a real child process, compared with the in-process engine.

Each test starts its own child (spawned, loading the tiny ``.nemo``: ~10 s on 2 cores).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal

import numpy as np
import pytest

from services.asr.engine import EngineConfig, EngineProcess, StreamClosedError
from services.asr.engine.events import EngineOverloadedError
from services.asr.engine.process import EngineProcessError
from services.asr.server import ASRClient, ASRServer, ServerConfig
from tests.asr_server.tiny import chunks, speechlike_pcm

pytestmark = pytest.mark.timeout(180)


def tiny_config(path: str, **overrides) -> EngineConfig:
    fields = dict(model=str(path), device="cpu", dtype="fp32", chunk_ms=160, max_streams=8)
    return EngineConfig(**(fields | overrides))


async def start_process(path: str, **overrides) -> EngineProcess:
    engine = EngineProcess(tiny_config(path, **overrides), torch_threads=1)
    await engine.start()
    return engine


async def feed(stream, pcm: bytes, *, speed: float = 8.0) -> None:
    for piece in chunks(pcm, 20):
        stream.push_audio(piece)
        await asyncio.sleep(0.02 / speed)


async def collect(stream, into: list) -> None:
    async for event in stream.events():
        into.append(event)


def in_process_final(engine, pcm: bytes) -> str:
    stream = engine.open_stream()
    try:
        stream.push_audio(pcm)
        return stream.finalize_sync(timeout=60).text
    finally:
        stream.close()


async def test_same_partials_and_finals_as_the_engine_in_this_process(tiny_nemo, tiny_engine):
    first, second = speechlike_pcm(3.0, seed=1), speechlike_pcm(2.0, seed=2)
    expected_first = await asyncio.to_thread(in_process_final, tiny_engine, first)
    expected_second = await asyncio.to_thread(in_process_final, tiny_engine, second)
    assert expected_first and expected_second != expected_first

    engine = await start_process(tiny_nemo)
    try:
        assert engine.pid != os.getpid()
        streams = [engine.open_stream() for _ in range(3)]
        partials: list[list] = [[] for _ in streams]
        readers = [
            asyncio.create_task(collect(s, out)) for s, out in zip(streams, partials, strict=True)
        ]
        # Three streams at once: batching across the process boundary changes nothing.
        await asyncio.gather(*(feed(s, first) for s in streams))
        finals = await asyncio.gather(*(s.finalize() for s in streams))
        assert [f.text for f in finals] == [expected_first] * 3
        assert all(f.is_final and f.utterance == 0 for f in finals)
        for got in partials:
            assert got and got[-1].text and expected_first.startswith(got[-1].text[:1])
            assert all(not e.is_final for e in got)

        # Reset: the next utterance starts from nothing and its final covers only new audio.
        stream = streams[0]
        stream.reset()
        await feed(stream, second)
        final = await stream.finalize()
        assert final.text == expected_second and final.utterance == 1
        assert all(e.utterance == 1 for e in partials[0][-1:])

        stats = engine.stats()
        assert stats["live_streams"] == 3 and stats["engine_pid"] == engine.pid
        for s in streams:
            s.close()
        await asyncio.wait_for(asyncio.gather(*readers), 5)  # events() ends on close
        with pytest.raises(StreamClosedError):
            stream.push_audio(second)
        with pytest.raises(StreamClosedError):
            await stream.finalize()
        # The child frees the slots (its stats arrive every 0.5 s).
        for _ in range(50):
            if engine.stats().get("slots_in_use") == 0:
                break
            await asyncio.sleep(0.1)
        assert engine.stats()["slots_in_use"] == 0
    finally:
        await engine.aclose()
    assert not engine._process.is_alive()


async def test_backlog_over_the_bound_raises_overloaded_on_a_later_push(tiny_nemo):
    engine = await start_process(tiny_nemo, max_backlog_s=1.0)
    try:
        stream = engine.open_stream()
        stream.push_audio(speechlike_pcm(5.0))  # 5 s at once: far past the 1 s bound
        raised = None
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                stream.push_audio(speechlike_pcm(0.02))
            except EngineOverloadedError as exc:
                raised = exc
                break
        assert raised is not None and "behind real time" in str(raised)
        # The stream can still be finalized or closed; other streams are not affected.
        other = engine.open_stream()
        other.push_audio(speechlike_pcm(1.0))
        assert (await asyncio.wait_for(other.finalize(), 30)).is_final
    finally:
        await engine.aclose()


async def test_non_finite_float_audio_is_refused_in_the_caller_and_the_stream_goes_on(
    tiny_nemo, tiny_engine
):
    pcm = speechlike_pcm(1.5, seed=4)
    expected = await asyncio.to_thread(in_process_final, tiny_engine, pcm)
    assert expected
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768  # back to exactly ``pcm``
    half = len(audio) // 2
    engine = await start_process(tiny_nemo)
    try:
        stream = engine.open_stream()
        stream.push_audio(audio[:half])
        for value in (np.nan, np.inf, -np.inf):
            spoiled = audio[half:].copy()
            spoiled[7] = value
            # Raised by push_audio itself, as by the engine in this process: never sent.
            with pytest.raises(ValueError, match="1 non-finite sample.*int16 PCM"):
                stream.push_audio(spoiled)
        stream.push_audio(audio[half:])
        final = await asyncio.wait_for(stream.finalize(), 30)
        assert final.text == expected
    finally:
        await engine.aclose()


async def test_a_model_that_cannot_load_fails_start_with_the_reason(tmp_path):
    missing = tmp_path / "missing.nemo"
    engine = EngineProcess(tiny_config(missing), torch_threads=1)
    with pytest.raises(EngineProcessError) as info:
        await engine.start()
    assert "missing.nemo" in str(info.value)
    assert not engine._process.is_alive()


async def test_engine_process_death_fails_streams_and_the_server_says_so(tiny_nemo):
    engine = await start_process(tiny_nemo)
    server = ASRServer(engine, ServerConfig(port=0, idle_timeout=0))
    await server.start()
    try:
        client = ASRClient(server.url)
        await client.connect()
        for piece in chunks(speechlike_pcm(1.0), 20):
            await client.send_audio(piece)
        stream = engine.open_stream()
        listening = asyncio.create_task(collect(stream, []))
        await asyncio.sleep(0.2)

        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(EngineProcessError, match="exited"):
            await asyncio.wait_for(listening, 10)
        with pytest.raises(EngineProcessError, match="exited"):
            await stream.finalize()
        # The server's client gets an engine error and a 1011 close; /ready turns 503.
        await asyncio.wait_for(client.closed.wait(), 10)
        assert client.close_code == 1011
        ready, body = server.readiness()
        assert not ready and "engine" in body
        with pytest.raises(StreamClosedError):
            engine.open_stream()
    finally:
        await server.stop()
        await engine.aclose()


def test_the_child_init_hook_is_picklable():
    """The CLI passes ``functools.partial(setup_logging, level)``; spawn must pickle it."""
    import pickle

    from agent.logs import setup_logging

    hook = pickle.loads(pickle.dumps(functools.partial(setup_logging, "DEBUG")))
    assert hook.func is setup_logging
