"""aiortc's receivers release audio packets on arrival, in order, with bounded lag after a loss;
video keeps aiortc's own buffer."""

from __future__ import annotations

from aiortc import rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from agent.webrtc_tuning import MAX_WAITING, reduce_audio_receive_latency


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
    reduce_audio_receive_latency()
    return rtcrtpreceiver.JitterBuffer(capacity=16, prefetch=4)


def test_audio_packets_leave_the_buffer_as_they_arrive():
    reduce_audio_receive_latency()
    reduce_audio_receive_latency()  # idempotent
    buffer_cls = rtcrtpreceiver.JitterBuffer
    assert issubclass(buffer_cls, JitterBuffer) and buffer_cls is not JitterBuffer

    assert feed(audio_buffer(), [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    video = buffer_cls(capacity=512, prefetch=4, is_video=True)
    assert video._prefetch == 4


def test_reordered_audio_is_put_back_in_order():
    # 3 arrives before 2: it waits, 2 goes out when it comes, 3 with the next arrival.
    assert feed(audio_buffer(), [1, 3, 2, 4, 5]) == [1, None, 2, 3, 4]


def test_a_late_packet_that_was_given_up_is_dropped():
    out = feed(audio_buffer(), [1, 3, 4, 5, 2, 6])
    assert out[:4] == [1, None, None, 3]  # 2 given up once MAX_WAITING newer ones waited
    assert out[4] is None and out[5] == 4  # 2 comes too late to be played; order is kept
    assert MAX_WAITING == 2


def test_a_lost_packet_leaves_bounded_lag_not_aiortcs_300_ms():
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
