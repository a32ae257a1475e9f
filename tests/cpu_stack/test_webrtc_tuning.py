"""The agent's aiortc receivers keep no audio prefetch; video keeps aiortc's own."""

from __future__ import annotations

from aiortc import rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from agent.webrtc_tuning import reduce_audio_receive_latency


def packet(seq: int) -> RtpPacket:
    rtp = RtpPacket(sequence_number=seq, timestamp=seq * 960, payload=bytes([seq % 256]))
    rtp._data = rtp.payload  # what the receiver sets after depayloading
    return rtp


def test_audio_packets_leave_the_buffer_one_packet_later_not_four():
    reduce_audio_receive_latency()
    reduce_audio_receive_latency()  # idempotent
    buffer_cls = rtcrtpreceiver.JitterBuffer
    assert issubclass(buffer_cls, JitterBuffer) and buffer_cls is not JitterBuffer

    audio = buffer_cls(capacity=16, prefetch=4)
    released = [audio.add(packet(seq))[1] for seq in range(1, 6)]
    # Packet 1 is complete once packet 2 arrives: nothing waits for four more.
    assert released[0] is None and released[1] is not None
    assert [frame.timestamp for frame in released[1:]] == [960, 1920, 2880, 3840]

    video = buffer_cls(capacity=512, prefetch=4, is_video=True)
    assert video._prefetch == 4


def test_reordered_audio_is_still_put_back_in_order():
    reduce_audio_receive_latency()
    audio = rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)
    out = []
    for seq in (1, 3, 2, 4, 5):
        frame = audio.add(packet(seq))[1]
        if frame is not None:
            out.append(frame.timestamp // 960)
    # In order, none lost (aiortc hands out one frame per arriving packet).
    assert out == [1, 2, 3]
