"""/v1/realtime: the official OpenAI SDK's realtime client transcribes through our ASR server.

The server runs the tiny engine on loopback; the audio is real recorded speech. Whatever the
input format, the completed transcript must equal what ``/v1/stream`` returns for the same 16 kHz
samples reaching the engine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import wave

import numpy as np
import pytest
from openai import AsyncOpenAI

from services.asr.server.client import ASRClient
from services.asr.server.realtime import _ALAW, _ULAW, InputFormat, _Decoder
from tests.e2e.speech import load_utterances

pytestmark = pytest.mark.timeout(120)
TOKEN = "realtime-test-token"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """One real recorded utterance as 16 kHz int16 (a CMU ARCTIC or Asterisk prompt)."""
    try:
        found = load_utterances()
    except RuntimeError as exc:
        pytest.skip(f"real speech unavailable: {exc}")
    chosen = [u for u in found if 1.5 <= u.duration_s <= 4.0]
    if not chosen:
        pytest.skip("no real speech cached (scripts/fetch_speech.py)")
    with wave.open(str(chosen[0].path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def resample(pcm16: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return (soxr.resample(pcm16.astype(np.float32) / 32768, 16000, rate) * 32767).astype("<i2")


def ulaw_encode(pcm16: np.ndarray) -> bytes:
    """G.711 mu-law codes: the code whose decoded value is nearest (test-side encoder)."""
    order = np.argsort(_ULAW)
    pos = np.clip(np.searchsorted(_ULAW[order], pcm16), 1, 255)
    lo, hi = order[pos - 1], order[pos]
    pick = np.where(np.abs(_ULAW[lo] - pcm16) <= np.abs(_ULAW[hi] - pcm16), lo, hi)
    return pick.astype(np.uint8).tobytes()


async def stream_final(server, pcm16k: bytes) -> dict:
    """The /v1/stream final for exactly these 16 kHz samples."""
    client = ASRClient(server.url, token=TOKEN)
    await client.connect()
    for i in range(0, len(pcm16k), 3200):
        await client.send_audio(pcm16k[i : i + 3200])
    final = await client.finalize(timeout=30)
    await client.close()
    return final


def sdk(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=TOKEN)


async def until(connection, kind: str, seen: list) -> object:
    """Events up to (and including) the first of ``kind``, collected into ``seen``."""
    async with asyncio.timeout(60):
        async for event in connection:
            seen.append(event)
            if event.type == kind:
                return event
    raise AssertionError(f"connection ended before {kind}")


async def append_all(connection, data: bytes, piece: int) -> None:
    for i in range(0, len(data), piece):
        audio = base64.b64encode(data[i : i + piece]).decode()
        await connection.input_audio_buffer.append(audio=audio)


async def test_sdk_transcribes_16k_pcm_like_v1_stream(start_server, speech):
    server = await start_server(token=TOKEN)
    pcm = speech.tobytes()
    expected = await stream_final(server, pcm)
    seen: list = []
    async with sdk(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = await until(conn, "session.created", seen)
        assert created.session.type == "transcription"
        audio_input = {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": audio_input}}
        )
        updated = await until(conn, "session.updated", seen)
        assert updated.session.audio.input.format.rate == 16000
        assert updated.session.audio.input.turn_detection is None
        await append_all(conn, pcm, 1600)  # 50 ms pieces
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed", seen)
        done = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
    assert done.item_id == committed.item_id
    assert done.transcript == expected["text"] and expected["text"]
    assert done.usage.seconds == pytest.approx(len(speech) / 16000, abs=1e-3)
    # Our extension: word times, the same as /v1/stream's.
    assert done.model_extra["words"] == expected["words"]
    deltas = [e.delta for e in seen if e.type.endswith("transcription.delta")]
    assert all(e.item_id == committed.item_id for e in seen if e.type.endswith(".delta"))
    assert expected["text"].startswith("".join(deltas))


@pytest.mark.parametrize("fmt", ["pcm24k", "g711_ulaw"])
async def test_other_input_formats_reach_the_engine_resampled_once(start_server, speech, fmt):
    """OpenAI's default 24 kHz PCM16 and 8 kHz mu-law, decoded and resampled to 16 kHz."""
    server = await start_server(token=TOKEN)
    if fmt == "pcm24k":
        data, fmt_obj, piece = resample(speech, 24000).tobytes(), None, 4800
        decoder = _Decoder(InputFormat("pcm16", 24000))
    else:
        data, piece = ulaw_encode(resample(speech, 8000)), 800
        fmt_obj = {"type": "audio/pcmu"}
        decoder = _Decoder(InputFormat("g711_ulaw", 8000))
    reaching = b"".join(decoder.feed(data[i : i + piece]) for i in range(0, len(data), piece))
    expected = await stream_final(server, reaching)
    seen: list = []
    async with sdk(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await until(conn, "session.created", seen)
        audio_input = {"turn_detection": None}
        if fmt_obj is not None:
            audio_input["format"] = fmt_obj
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": audio_input}}
        )
        await until(conn, "session.updated", seen)
        await append_all(conn, data, piece)
        await conn.input_audio_buffer.commit()
        done = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
    assert done.transcript == expected["text"]
    assert done.usage.seconds == pytest.approx(len(reaching) / 2 / 16000, abs=1e-3)


def test_g711_tables_match_the_standard_on_known_codes():
    # ITU-T G.711: mu-law 0xFF/0x7F are +-0, 0x00 is -32124, 0x80 +32124; A-law 0xD5 is +8,
    # 0x55 is -8, 0xAA is +32256, 0x2A is -32256.
    assert (_ULAW[0xFF], _ULAW[0x7F], _ULAW[0x00], _ULAW[0x80]) == (0, 0, -32124, 32124)
    assert (_ALAW[0xD5], _ALAW[0x55], _ALAW[0xAA], _ALAW[0x2A]) == (8, -8, 32256, -32256)
    assert len(set(_ULAW.tolist())) == 255 and len(set(_ALAW.tolist())) == 256


async def test_server_vad_commits_each_utterance_by_itself(start_server, speech):
    """OpenAI's default turn detection: speech_started/stopped, then an automatic commit."""
    server = await start_server(token=TOKEN)
    silence = np.zeros(16000, dtype="<i2")
    pcm = np.concatenate([silence[:8000], speech, silence, speech, silence]).tobytes()
    seen: list = []
    async with sdk(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await until(conn, "session.created", seen)
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 16000},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                    }
                },
            }
        )
        await until(conn, "session.updated", seen)
        for i in range(0, len(pcm), 640):  # 20 ms pieces, about real time
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 640]).decode())
            if i % 6400 == 0:
                await asyncio.sleep(0.01)
        first = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
        second = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
    kinds = [e.type for e in seen]
    starts = [e for e in seen if e.type == "input_audio_buffer.speech_started"]
    stops = [e for e in seen if e.type == "input_audio_buffer.speech_stopped"]
    assert len(starts) == 2 and len(stops) == 2
    assert (
        kinds.index("input_audio_buffer.speech_started")
        < kinds.index("input_audio_buffer.speech_stopped")
        < kinds.index("input_audio_buffer.committed")
    )
    # The first speech runs from 0.5 s for the recording's length (VAD lead and tail allowed).
    assert 0 <= starts[0].audio_start_ms <= 600
    assert 500 + len(speech) / 16 <= stops[0].audio_end_ms <= 500 + len(speech) / 16 + 1000
    assert first.item_id == starts[0].item_id != second.item_id == starts[1].item_id
    assert first.transcript and second.transcript


async def test_bad_events_get_openai_errors_and_the_session_goes_on(start_server, speech):
    server = await start_server(token=TOKEN)
    seen: list = []
    async with sdk(server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await until(conn, "session.created", seen)
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "c1"})  # nothing yet
        empty = await until(conn, "error", seen)
        assert empty.error.code == "input_audio_buffer_commit_empty"
        assert empty.error.event_id == "c1" and empty.error.type == "invalid_request_error"
        await conn.send({"type": "response.create", "event_id": "r1"})
        unknown = await until(conn, "error", seen)
        assert unknown.error.param == "type" and unknown.error.event_id == "r1"
        await conn.send({"type": "input_audio_buffer.append", "audio": "not base64!"})
        bad_audio = await until(conn, "error", seen)
        assert bad_audio.error.param == "audio"
        await conn.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}},
                },
            }
        )
        bad_format = await until(conn, "error", seen)
        assert "44100" in bad_format.error.message
        # Still serving, with the session as it was (24 kHz, server VAD).
        await conn.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        )
        updated = await until(conn, "session.updated", seen)
        assert updated.session.audio.input.format.rate == 24000
        await append_all(conn, resample(speech, 24000).tobytes(), 4800)
        await conn.input_audio_buffer.commit()
        done = await until(conn, "conversation.item.input_audio_transcription.completed", seen)
        assert done.transcript


async def test_raw_socket_garbage_clear_and_auth(start_server, speech):
    """What the SDK never sends: garbage JSON and binary frames; clear; a missing token."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    server = await start_server(token=TOKEN)
    url = f"ws://127.0.0.1:{server.port}/v1/realtime?intent=transcription"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
    async with connect(url, additional_headers=headers) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "transcription_session.created"  # beta names for beta clients
        await ws.send("{not json")
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_json"
        await ws.send(b"\x00\x01")
        assert json.loads(await ws.recv())["error"]["param"] == "audio"
        update = {
            "type": "transcription_session.update",
            "session": {"input_audio_format": "pcm16", "turn_detection": None},
        }
        await ws.send(json.dumps(update))
        assert json.loads(await ws.recv())["type"] == "transcription_session.updated"
        chunk = base64.b64encode(resample(speech, 24000).tobytes()[:48000]).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert json.loads(await ws.recv())["type"] == "input_audio_buffer.cleared"
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "x"}))
        error = json.loads(await ws.recv())
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"  # the clear dropped it
