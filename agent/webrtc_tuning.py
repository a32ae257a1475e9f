"""Cut WebRTC audio latency: packets leave the receive buffer on arrival, and the bot's
outgoing audio never runs dry mid-word.

Receiving.
aiortc (under Pipecat's SmallWebRTC transport) holds every received audio packet until four more
have arrived (``JitterBuffer(prefetch=4)``), and even with no prefetch it releases a packet only
when the next one arrives, because a video frame can span several packets. An Opus packet is a
whole 20 ms frame (RFC 7587), so waiting buys an analyser nothing: the agent never plays the
user's audio, it only feeds it to the VAD and the ASR. The buffer below releases audio packets in
order the moment they arrive.

It also bounds the lag a lost packet leaves behind. aiortc waits for a missing packet until 16
newer ones have queued (320 ms) and then keeps that queue for the rest of the call, so one lost
packet delays every later word by 300 ms. Here a missing packet is given up once
``MAX_WAITING`` newer ones wait, and no more than ``MAX_WAITING`` frames ever queue behind the one
released (older ones are dropped): at most 40 ms of lag after a loss or a reordering.

Measured over loopback: user's end of speech -> VAD input 102 ms with aiortc's buffer, 43 ms with
no prefetch, 23 ms with release on arrival. Video keeps aiortc's settings.

Sending. Pipecat's output transport writes the bot's audio 40 ms at a time and waits until the
track has sent all of it before writing more, so the track's queue is empty at every chunk
boundary. The track is paced by its own clock; when the event loop runs late (speech synthesis
on a busy CPU) it catches up at once, finds the queue empty and sends 10 ms of silence in the
middle of a word: a click, and 10 ms more delay for the rest of the reply. Counted over 33 s of
replies on two busy cores: 19 such holes. ``LookaheadAudioTrack`` lets the writer go on as soon
as the previous chunk is sent, so one chunk always waits in the queue (at most 40 ms more audio
plays after an interruption). And when speech starts after silence, its first 40 ms go out the
moment they are written instead of on the next ticks of the track's clock. Two whole Opus packets
are needed: the encoder's phase is arbitrary, and its look-ahead and resampler hold back the
onset, so the first packet often decodes to near silence. Measured over loopback on two busy
cores (``scripts/bench_v2v.py``, 20 turns each): the bot's first audible frame reached the client
37 ms p50 (55 p90) after the agent started speaking with 20 ms sent at once, 24 ms (35 p90) with
40 ms.

Barge-in. The track is the last place the bot's audio waits, so it is where the bot goes quiet
the moment the user starts to speak (``pipelines/barge_in.py``): ``pause`` sends silence and
keeps what is queued (a backchannel lets the reply go on where it stopped), ``flush`` drops it
(an interruption) and says how much was never sent, and ``added_secs`` counts all audio ever
queued, so sent audio is ``added_secs`` minus what ``flush`` dropped.

Both are process-wide patches of a library class (the agent applies them once at start-up); each
function returns an undo, and :func:`audio_receive_latency_reduced` and
:func:`audio_output_kept_fed` apply them for a ``with`` block only (tests, clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import time
from collections.abc import Callable, Iterator

import numpy as np
from aiortc import rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from av import AudioFrame
from pipecat.transports.smallwebrtc import transport as smallwebrtc_transport
from pipecat.transports.smallwebrtc.transport import RawAudioTrack

# Newer audio packets allowed to wait behind a missing one (and behind the one being released).
MAX_WAITING = 2
# 10 ms frames sent at once when the bot starts speaking after silence.
ONSET_BURST_FRAMES = 4


class LowLatencyAudioJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, releasing audio packets on arrival; video unchanged."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        super().__init__(capacity, prefetch if is_video else 0, is_video)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._is_video:
            return super()._remove_frame(sequence_number)
        # aiortc's receiver takes at most one frame per arriving packet, so the oldest goes.
        held = [i for i in range(self._capacity) if self._packet_at(i) is not None]
        if not held or (self._packet_at(0) is None and len(held) <= MAX_WAITING):
            return None  # nothing, or a gap that may still fill
        # Skip what is missing before the oldest held packet, and drop what would queue too long.
        skip = max(held[0], held[-1] - MAX_WAITING) if len(held) > MAX_WAITING + 1 else held[0]
        start = next(i for i in held if i >= skip)
        self.remove(start)
        packet = self._packet_at(0)
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)

    def _packet_at(self, offset: int):
        return self._packets[(self._origin + offset) % self._capacity]


class LookaheadAudioTrack(RawAudioTrack):
    """Pipecat's output track; a write returns once the write before it is sent."""

    def __init__(self, sample_rate: int, auto_silence: bool = True):
        super().__init__(sample_rate, auto_silence)
        self._previous_write: asyncio.Future | None = None
        self._restarting = False
        self._wakeup: asyncio.Future | None = None
        # Barge-in (pipelines/barge_in.py): while paused, recv sends silence and keeps the queue.
        self._paused = False
        self._added_bytes = 0

    def add_audio_bytes(self, audio_bytes: bytes) -> asyncio.Future:
        self._restarting = self._restarting or not self._chunk_queue
        sent = super().add_audio_bytes(audio_bytes)
        self._added_bytes += len(audio_bytes)
        self._wake()
        previous, self._previous_write = self._previous_write, sent
        if previous is None or previous.done():
            # Nothing else queued: let the writer queue the next chunk right away.
            previous = asyncio.get_running_loop().create_future()
            previous.set_result(True)
        return previous

    @property
    def paused(self) -> bool:
        """Whether the track is holding its queued audio back (sending silence)."""
        return self._paused

    @property
    def added_secs(self) -> float:
        """Seconds of audio queued on this track since it was made (sent, queued or flushed)."""
        return self._added_bytes / 2 / self._sample_rate

    def pause(self) -> None:
        """Send silence from the next frame on, keeping the queued audio for :meth:`resume`."""
        self._paused = True

    def resume(self) -> None:
        """Send the queued audio again, from where :meth:`pause` stopped it."""
        if self._paused:
            self._paused = False
            # Its first frames go out at once, as after any silence.
            self._restarting = True
            self._wake()

    def flush(self) -> float:
        """Drop the queued audio (an interruption) and resume; returns the seconds dropped.

        Every pending write is released, so the writer goes on to what is queued after the
        interruption instead of waiting for audio that will never be sent.
        """
        dropped = sum(len(chunk) for chunk, _ in self._chunk_queue)
        for _, future in self._chunk_queue:
            if future is not None and not future.done():
                future.set_result(True)
        self._chunk_queue.clear()
        self._paused = False
        self._restarting = False
        return dropped / 2 / self._sample_rate

    async def recv(self):
        if self._paused:
            return await self._silent_frame()
        if not self._chunk_queue and self._timestamp > 0:
            await self._idle_until_due()
        if self._restarting and self._chunk_queue:
            # Audio after silence: its first ONSET_BURST_FRAMES (or what is queued) are due
            # now, so the first Opus packets leave without waiting for the clock. The
            # track then runs that much ahead of real time.
            self._restarting = False
            burst = min(ONSET_BURST_FRAMES, len(self._chunk_queue))
            due_now = time.time() - self._timestamp / self._sample_rate - (burst - 1) * 0.01
            self._start = min(self._start, due_now)
        return await super().recv()

    async def _silent_frame(self):
        """Ten milliseconds of silence on the track's clock, the queue left as it is."""
        wait = self._start + self._timestamp / self._sample_rate - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = AudioFrame.from_ndarray(
            np.zeros((1, self._samples_per_10ms), np.int16), layout="mono"
        )
        frame.sample_rate = self._sample_rate
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, self._sample_rate)
        self._timestamp += self._samples_per_10ms
        return frame

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _idle_until_due(self) -> None:
        """Wait for the next silent frame's time, or less if audio arrives first."""
        wait = self._start + self._timestamp / self._sample_rate - time.time()
        if wait <= 0:
            return
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        timer = loop.call_later(wait, _resolve, self._wakeup)
        try:
            await self._wakeup
        finally:
            timer.cancel()
            self._wakeup = None


def output_track_of(connection) -> LookaheadAudioTrack | None:
    """The lookahead track a SmallWebRTC connection sends the bot's audio by, once it has one.

    Pipecat's transport makes the track when the peer connects and puts it on the first
    transceiver; None before that, or when the track is another class (the patch is off).
    """
    pc = getattr(connection, "pc", None)
    for transceiver in pc.getTransceivers() if pc is not None else ():
        track = transceiver.sender.track if transceiver.sender else None
        if isinstance(track, LookaheadAudioTrack):
            return track
    return None


def reduce_audio_receive_latency() -> Callable[[], None]:
    """Make aiortc's receivers release audio packets on arrival (idempotent; process-wide).

    Returns:
        A function that puts back the buffer class that was there before the call.
    """
    return _replace(rtcrtpreceiver, "JitterBuffer", LowLatencyAudioJitterBuffer)


def keep_audio_output_fed() -> Callable[[], None]:
    """Make Pipecat's SmallWebRTC transport send through ``LookaheadAudioTrack`` (idempotent).

    Returns:
        A function that puts back the track class that was there before the call.
    """
    return _replace(smallwebrtc_transport, "RawAudioTrack", LookaheadAudioTrack)


@contextlib.contextmanager
def audio_receive_latency_reduced() -> Iterator[None]:
    """Receivers created inside the block use the low-latency buffer (and keep it after)."""
    undo = reduce_audio_receive_latency()
    try:
        yield
    finally:
        undo()


@contextlib.contextmanager
def audio_output_kept_fed() -> Iterator[None]:
    """Transports that build their output track inside the block build a lookahead one."""
    undo = keep_audio_output_fed()
    try:
        yield
    finally:
        undo()


def _replace(module, name: str, value) -> Callable[[], None]:
    previous = getattr(module, name)
    setattr(module, name, value)
    return functools.partial(setattr, module, name, previous)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
