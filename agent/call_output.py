"""A phone call's output that barge-in can pause: the bot goes quiet on the line at once.

Over WebRTC, barge-in pauses the output track at the caller's first voiced 20 ms
(``agent/webrtc_tuning.py``) while it decides whether the speech is an interruption or a
backchannel. Pipecat's WebSocket output for phone calls has no such track: it sends each chunk
of audio to the provider as it is due (its write sleeps to the playback clock), so the bot
talked on for as long as the decision took (0.6-0.8 s). Pausing the write does the same as the
track's pause: the provider gets no more audio, the rest stays queued in Pipecat's output, and
a resume sends it on; an interruption drops it (Pipecat clears its queue, and the chunk the
paused write holds is not sent).
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import OutputAudioRawFrame
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketOutputTransport,
    FastAPIWebsocketTransport,
)

# A hold never lasts longer than this: Pipecat writes a peer off when one write takes
# ``audio_out_write_timeout_secs`` (10 s). Barge-in decides within ~3.5 s (speech up to
# turn.backchannel_max_secs, then the STT's p99 to a transcript).
MAX_HOLD_SECS = 6.0


class PausableCallOutput(FastAPIWebsocketOutputTransport):
    """Pipecat's WebSocket output with ``pause``/``resume``/``flush`` for barge-in.

    ``added_secs`` counts the seconds of audio sent to the line: what the caller heard, on the
    transport's clock (``pipelines.barge_in.PausableOutput``).
    """

    def __init__(self, *args, **kwargs):
        """Initialize the output; the arguments are ``FastAPIWebsocketOutputTransport``'s."""
        super().__init__(*args, **kwargs)
        self._playing = asyncio.Event()
        self._playing.set()
        self._held_frames = 0  # writes waiting on the pause (0 or 1: one audio task)
        self._drop_held = False
        self._sent_secs = 0.0

    @property
    def added_secs(self) -> float:
        """Seconds of audio sent to the line so far."""
        return self._sent_secs

    @property
    def paused(self) -> bool:
        """Whether the output holds its audio."""
        return not self._playing.is_set()

    def pause(self) -> None:
        """Send nothing more until :meth:`resume` (or :meth:`flush`); keep the queue."""
        self._playing.clear()

    def resume(self) -> None:
        """Send the held audio on, from where it paused."""
        self._playing.set()

    def flush(self) -> float:
        """Drop the held chunk and play again; Pipecat's interruption drops the rest.

        Returns:
            Seconds dropped that :attr:`added_secs` counted: none, it counts only what was sent.
        """
        self._drop_held = self._held_frames > 0
        self._playing.set()
        return 0.0

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Write ``frame`` to the line, first waiting while the output is paused."""
        if not self._playing.is_set():
            self._held_frames += 1
            try:
                await asyncio.wait_for(self._playing.wait(), MAX_HOLD_SECS)
            except TimeoutError:
                self._playing.set()  # never long enough for Pipecat to write the peer off
            finally:
                self._held_frames -= 1
            if self._drop_held:
                self._drop_held = False
                return False
        written = await super().write_audio_frame(frame)
        if written:
            channels = max(1, self._params.audio_out_channels)
            self._sent_secs += len(frame.audio) / 2 / self.sample_rate / channels
        return written


class PausableCallTransport(FastAPIWebsocketTransport):
    """Pipecat's WebSocket transport for a call, its output a :class:`PausableCallOutput`."""

    def __init__(self, *args, **kwargs):
        """Initialize the transport; the arguments are ``FastAPIWebsocketTransport``'s."""
        super().__init__(*args, **kwargs)
        self._output = PausableCallOutput(self, self._client, self._params, name=self._output_name)

    def output(self) -> PausableCallOutput:
        """The call's pausable output."""
        return self._output
