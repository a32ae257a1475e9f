"""aiortc's receivers release audio packets on arrival, in order, with bounded lag after a loss;
video keeps aiortc's own buffer."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from agent.webrtc_tuning import (
    MAX_WAITING,
    LowLatencyAudioJitterBuffer,
    audio_receive_latency_reduced,
    reduce_audio_receive_latency,
)


@pytest.fixture
def low_latency():
    """aiortc builds receivers with the agent's buffer during the test, its own after it."""
    with audio_receive_latency_reduced():
        yield
    assert rtcrtpreceiver.JitterBuffer is JitterBuffer


def packet(seq: int) -> RtpPacket:
    rtp = RtpPacket(sequence_number=seq, timestamp=seq * 960, payload=bytes([seq % 256]))
    rtp._data = rtp.payload  # what the receiver sets after depayloading
    return rtp


def feed(buffer: JitterBuffer, sequence: list[int]) -> list[int | None]:
    """What each arriving packet releases (its sequence number), in arrival order."""
    out = []
    for seq in sequence:
        frame = buffer.add(packet(seq))[1]
        out.append(None if frame is None else frame.timestamp // 960)
    return out


def audio_buffer() -> JitterBuffer:
    """The buffer aiortc's receiver would build for audio now."""
    return rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)


def receiver_buffer(pc: RTCPeerConnection) -> type:
    """The jitter buffer class of a receiver aiortc builds for a new audio transceiver."""
    receiver = pc.addTransceiver("audio").receiver
    return type(receiver._RTCRtpReceiver__jitter_buffer)


async def test_the_patch_reaches_aiortcs_receivers_and_is_undone():
    pc = RTCPeerConnection()
    try:
        undo_first = reduce_audio_receive_latency()
        undo_second = reduce_audio_receive_latency()  # idempotent
        assert receiver_buffer(pc) is LowLatencyAudioJitterBuffer
        undo_second()
        assert receiver_buffer(pc) is LowLatencyAudioJitterBuffer  # still the first patch
        undo_first()
        assert receiver_buffer(pc) is JitterBuffer
        with audio_receive_latency_reduced():
            assert receiver_buffer(pc) is LowLatencyAudioJitterBuffer
        assert receiver_buffer(pc) is JitterBuffer
    finally:
        await pc.close()


def test_audio_packets_leave_the_buffer_as_they_arrive(low_latency):
    buffer_cls = rtcrtpreceiver.JitterBuffer
    assert issubclass(buffer_cls, JitterBuffer) and buffer_cls is not JitterBuffer

    assert feed(audio_buffer(), [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    video = buffer_cls(capacity=512, prefetch=4, is_video=True)
    assert video._prefetch == 4


def test_reordered_audio_is_put_back_in_order(low_latency):
    # 3 arrives before 2: it waits, 2 goes out when it comes, 3 with the next arrival.
    assert feed(audio_buffer(), [1, 3, 2, 4, 5]) == [1, None, 2, 3, 4]


def test_a_late_packet_that_was_given_up_is_dropped(low_latency):
    out = feed(audio_buffer(), [1, 3, 4, 5, 2, 6])
    assert out[:4] == [1, None, None, 3]  # 2 given up once MAX_WAITING newer ones waited
    assert out[4] is None and out[5] == 4  # 2 comes too late to be played; order is kept
    assert MAX_WAITING == 2


def test_a_lost_packet_leaves_bounded_lag_not_aiortcs_300_ms(low_latency):
    ours = feed(audio_buffer(), [1, *range(3, 40)])
    # After the loss, each arrival releases a frame at most MAX_WAITING packets old.
    lags = [
        seq - released for seq, released in zip(range(3, 40), ours[1:], strict=True) if released
    ]
    assert lags and max(lags) <= MAX_WAITING

    # aiortc's own buffer (what Pipecat's transport would use unpatched) keeps 15 packets queued.
    stock = feed(JitterBuffer(capacity=16, prefetch=0), [1, 2, *range(4, 40)])
    stock_lags = [s - r for s, r in zip(range(4, 40), stock[2:], strict=True) if r]
    assert min(stock_lags[-5:]) >= 14
