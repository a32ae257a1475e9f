"""The agent's WebRTC output track keeps a chunk queued, so a late event loop never sends
silence in the middle of the bot's speech (Pipecat's own track does)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
from pipecat.transports.smallwebrtc.transport import RawAudioTrack

from agent.webrtc_tuning import ONSET_BURST_FRAMES, LookaheadAudioTrack, audio_output_kept_fed

RATE = 24000
CHUNK_MS = 40  # what Pipecat's output transport writes at a time
WRITER_LOOP_TURNS = 3


def tone(ms: int) -> bytes:
    """``ms`` of a constant, clearly voiced level at the track's rate."""
    return np.full(RATE * ms // 1000, 1000, np.int16).tobytes()


async def holes_in_speech(track_class: type, chunks: int = 25) -> int:
    """Silent 10 ms frames the track sends between the first and last chunk of speech.

    A writer like Pipecat's output transport writes 40 ms, awaits the write, and takes a few
    loop turns to bring the next chunk (its frame hops and queues). The consumer is aiortc's
    sender after the loop ran late: the track's clock is behind, so every ``recv`` returns at
    once, with one loop turn for the encoder between frames.
    """
    track = track_class(sample_rate=RATE)
    chunk = tone(CHUNK_MS)

    async def writer():
        for _ in range(chunks):
            await track.add_audio_bytes(chunk)
            for _ in range(WRITER_LOOP_TURNS):
                await asyncio.sleep(0)

    writing = asyncio.create_task(writer())
    await asyncio.sleep(0)
    track._start -= 10.0  # ten seconds behind: no recv waits
    levels = []
    while len([x for x in levels if x]) < chunks * CHUNK_MS // 10:
        frame = await track.recv()
        levels.append(int(np.abs(frame.to_ndarray()).max()))
        await asyncio.sleep(0)  # the sender awaits the encoder between frames
        if len(levels) > 10 * chunks * CHUNK_MS // 10:
            break
    await writing
    first = next(i for i, level in enumerate(levels) if level)
    return sum(1 for level in levels[first:] if not level)


@pytest.mark.asyncio
async def test_a_late_loop_leaves_no_silence_inside_speech():
    assert await holes_in_speech(LookaheadAudioTrack) == 0
    # Pipecat's track, written the same way, runs dry at every chunk boundary.
    assert await holes_in_speech(RawAudioTrack) > 0


@pytest.mark.asyncio
async def test_a_write_returns_once_the_write_before_it_is_sent():
    track = LookaheadAudioTrack(sample_rate=RATE)
    chunk = bytes(2 * RATE * CHUNK_MS // 1000)
    first = track.add_audio_bytes(chunk)
    assert first.done()  # nothing queued before it
    second = track.add_audio_bytes(chunk)
    assert not second.done()  # waits for the first chunk to be sent
    track._start -= 10.0
    for _ in range(CHUNK_MS // 10):
        await track.recv()
    assert second.done()


@pytest.mark.timeout(60)
async def test_the_transport_sends_the_bots_audio_through_the_lookahead_track():
    """A real SmallWebRTC session: the track the bot's audio leaves by is the lookahead one."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from pipecat.frames.frames import OutputAudioRawFrame
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc import transport as smallwebrtc
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    from tests.e2e.agent_process import webrtc_host_address
    from tests.stt.harness import LivePipeline

    if webrtc_host_address() is None:
        pytest.skip("aiortc peers need an IPv4 address other than 127.x (scripts/test.sh)")
    client = RTCPeerConnection()
    received: list[np.ndarray] = []

    @client.on("track")
    def _on_track(track):
        async def record():
            with contextlib.suppress(MediaStreamError):
                while True:
                    received.append((await track.recv()).to_ndarray())

        asyncio.ensure_future(record())

    client.addTransceiver("audio", direction="sendrecv")
    await client.setLocalDescription(await client.createOffer())
    try:
        with audio_output_kept_fed():
            connection = SmallWebRTCConnection()
            await connection.initialize(sdp=client.localDescription.sdp, type="offer")
            answer = connection.get_answer()
            await client.setRemoteDescription(
                RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
            )
            bot = smallwebrtc.SmallWebRTCTransport(
                connection, TransportParams(audio_in_enabled=True, audio_out_enabled=True)
            )
            connected = asyncio.Event()

            @bot.event_handler("on_client_connected")
            async def _connected(_transport, _client):
                connected.set()

            async with LivePipeline([bot.input(), bot.output()]) as live:
                await asyncio.wait_for(connected.wait(), 30)
                sending = connection.pc.getTransceivers()[0].sender.track
                assert type(sending) is LookaheadAudioTrack
                # And the bot's audio reaches the peer through it.
                await live.send(OutputAudioRawFrame(tone(200), RATE, 1))
                assert await live.wait_for(
                    lambda: any(np.abs(f).max() > 100 for f in received), timeout=10
                )
    finally:
        await client.close()
    # Outside the block, Pipecat's transport builds its own track again.
    assert smallwebrtc.RawAudioTrack is RawAudioTrack


def _due(track: LookaheadAudioTrack) -> float:
    """When the track's next frame is due, on the wall clock."""
    return track._start + track._timestamp / RATE


@pytest.mark.asyncio
async def test_speech_after_silence_sends_its_first_frames_at_once():
    track = LookaheadAudioTrack(sample_rate=RATE)
    for _ in range(3):  # idle: paced silence
        assert not np.abs((await track.recv()).to_ndarray()).any()
    track.add_audio_bytes(tone(2 * CHUNK_MS))
    started = time.time()
    for sent in range(ONSET_BURST_FRAMES):
        if sent:  # the first recv set the clock; every frame of the burst is due already
            assert _due(track) <= time.time()
        assert np.abs((await track.recv()).to_ndarray()).all()
    # The burst was due at once, enough for whole Opus packets; then the clock paces again:
    # the next frame is due one frame after the burst left.
    assert _due(track) >= started + 0.005


@pytest.mark.asyncio
async def test_the_onset_burst_is_no_longer_than_the_audio_queued():
    track = LookaheadAudioTrack(sample_rate=RATE)
    await track.recv()
    track.add_audio_bytes(tone(20))
    started = time.time()
    for _ in range(2):
        assert np.abs((await track.recv()).to_ndarray()).all()
    # No silent frame is due at once behind it: no hole if the next write comes in time.
    assert _due(track) >= started + 0.005


@pytest.mark.asyncio
async def test_an_idle_track_wakes_when_audio_arrives():
    track = LookaheadAudioTrack(sample_rate=RATE)
    await track.recv()
    track._start += 5.0  # the next silent frame is due in five seconds
    waiting = asyncio.create_task(track.recv())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    track.add_audio_bytes(tone(CHUNK_MS))
    frame = await asyncio.wait_for(waiting, timeout=1.0)
    assert np.abs(frame.to_ndarray()).all()


async def sent_levels(track: LookaheadAudioTrack, frames: int) -> list[int]:
    """Peak level of each of the next ``frames`` 10 ms frames the track sends (clock behind)."""
    track._start -= 10.0
    return [int(np.abs((await track.recv()).to_ndarray()).max()) for _ in range(frames)]


@pytest.mark.asyncio
async def test_a_paused_track_sends_silence_and_keeps_its_audio_for_resume():
    """Barge-in holds the bot's audio: silence at once, nothing lost if the bot goes on."""
    track = LookaheadAudioTrack(sample_rate=RATE)
    track.add_audio_bytes(tone(40))
    second = track.add_audio_bytes(tone(40))
    assert await sent_levels(track, 1) == [1000]
    track.pause()
    assert track.paused
    assert await sent_levels(track, 10) == [0] * 10  # silence from the next frame on
    assert not second.done()  # the writer waits: nothing more piles up behind the pause
    track.resume()
    assert await sent_levels(track, 7) == [1000] * 7  # the other 70 ms, where it stopped
    assert second.done()
    assert track.added_secs == pytest.approx(0.08)


@pytest.mark.asyncio
async def test_flush_drops_the_queued_audio_releases_the_writer_and_says_how_much():
    """An interruption: what the track never sent is dropped, and counted."""
    track = LookaheadAudioTrack(sample_rate=RATE)
    track.add_audio_bytes(tone(40))
    pending = track.add_audio_bytes(tone(40))
    assert await sent_levels(track, 1) == [1000]
    track.pause()
    assert track.flush() == pytest.approx(0.07)
    assert pending.done()  # the writer goes on to whatever comes after the interruption
    assert not track.paused
    assert await sent_levels(track, 3) == [0, 0, 0]
    # What was sent is what was added minus what was dropped.
    assert track.added_secs - 0.07 == pytest.approx(0.01)
