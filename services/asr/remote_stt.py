"""Remote cache-aware Nemotron STT: the same Pipecat service, on a shared ASR server.

Many bot processes stream into one ``voice-agent asr-server`` (one engine, one GPU), or into a
cluster of them behind one URL. Frames, finals and metrics are those of
:class:`~services.asr.nemotron_stt.NemotronSTTService` (the turn logic lives in
:mod:`services.asr.stt_base`); this class adds the connection, and makes failover lossless:

- it keeps the audio of the current utterance since its last reset (at most ``replay_secs``);
- when the connection drops (1006, a reset socket, a server going away with 1001 /
  ``shutting_down``, an overloaded server's 1013) it reconnects at once, then with backoff, to
  whatever server the URL reaches now (in a cluster the load balancer picks);
- on the new connection it replays that utterance from its start, then the audio that arrived
  during the outage, faster than real time but paced by a token bucket (``replay_burst_secs`` at
  once, then ``replay_rate`` x real time) that stays inside the server's audio rate limit
  (``ServerConfig.max_audio_rate`` 4x with ``audio_burst_s`` 10 s by default) and the engine's
  backlog bound (``max_backlog_s`` 10 s). The engine is exact, so the new stream's text is the
  one the old stream had at the same audio;
- a final requested while disconnected or during the replay is sent once the replay reaches the
  audio it covers: it is the final the connection would have given without the failure. Its
  word times are on the utterance's clock, wherever the new server's clock started;
- partials of the old connection are superseded: the new connection's partials restart the
  utterance's text and are held back until they are as long as the text already shown (or the
  replayed audio is processed), so ``InterimTranscriptionFrame`` consumers, which replace the
  shown text with each frame, never see it shrink or repeat;
- audio with no speech (no VAD start) for 4 s resets the utterance (keeping its last 0.5 s), so
  the silence between turns is not what a failover replays; the reset falls on the same audio
  with or without a failure;
- an utterance longer than ``replay_secs`` cannot be replayed whole: the failover logs a warning
  and the final covers the audio kept (its head is counted in ``lost_audio_secs``).

Each failover is logged with its cause, the seconds replayed and the time from the drop to the
first partial on the new connection, and counted: ``failovers``, ``replayed_secs``,
``lost_audio_secs``, the recent :class:`Failover` records in ``failover_log``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from services.asr.engine.events import WordTiming
from services.asr.server.client import ASRClient, ASRRejectedError, ASRServerError
from services.asr.server.protocol import BYTES_PER_SECOND, E_SHUTTING_DOWN
from services.asr.stt_base import (
    CARRY_OVER_SECS,
    BackendTranscript,
    CacheAwareSTTService,
    CacheAwareSTTSettings,
)

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
DEFAULT_REPLAY_SECS = 20.0
# Audio per message while catching up: few messages for a replay, far below the server's
# max_message_bytes (64 KiB); live audio goes out as it comes (20 ms frames).
_PIECE_BYTES = BYTES_PER_SECOND // 5
# The utterance buffer is trimmed once it is this much over the bound: one copy a second,
# not one per 20 ms frame.
_TRIM_SLACK_BYTES = BYTES_PER_SECOND
# Audio without speech (no VAD start since the last reset, no final pending) after which the
# service resets the utterance itself, keeping its last CARRY_OVER_SECS: otherwise the silence
# between turns (the bot may talk for 20 s) would be the first thing a failover replays. The
# reset falls on the same audio with or without a failure, so it changes no transcript; text
# recognized in that audio without the VAD hearing speech (noise) is dropped with it.
_IDLE_RESET_SECS = 4.0
# A connection that ends sooner than this after it opened counts as a failed attempt (backoff),
# so a server that accepts and drops at once is not hammered.
_SHORT_LIVED_S = 1.0

__all__ = [
    "DEFAULT_REPLAY_SECS",
    "DEFAULT_URL",
    "Failover",
    "RemoteNemotronSTTService",
    "RemoteNemotronSTTSettings",
]


@dataclass
class RemoteNemotronSTTSettings(CacheAwareSTTSettings):
    """Runtime settings of :class:`RemoteNemotronSTTService` (model, language, interim_results)."""


@dataclass
class Failover:
    """One lost connection and its replacement (times are ``time.monotonic()`` seconds).

    Attributes:
        cause: Why the connection ended (close code and reason, or the server shutting down).
        lost_at: When the loss was noticed.
        attempts: Connection attempts that failed before the new connection.
        reconnected_at: When the new connection was up (None: not yet).
        replayed_s: Audio of the utterance sent again (the old connection had it).
        buffered_s: Audio that arrived during the outage (sent after the replay).
        lost_audio_s: Head of the utterance beyond ``replay_secs``, not replayed.
        first_partial_at: When the new connection's first partial arrived.
        caught_up_at: When its partials reached the text already shown (pushed again from then).
    """

    cause: str
    lost_at: float
    attempts: int = 0
    reconnected_at: float | None = None
    replayed_s: float = 0.0
    buffered_s: float = 0.0
    lost_audio_s: float = 0.0
    first_partial_at: float | None = None
    caught_up_at: float | None = None
    # Where the old connection stood: its utterance and the bytes of it sent.
    _utterance: int = -1
    _sent: int = 0

    @property
    def time_to_first_partial_s(self) -> float | None:
        """Seconds from the drop to the first partial on the new connection."""
        return None if self.first_partial_at is None else self.first_partial_at - self.lost_at


@dataclass
class _PendingFinal:
    """A finalize request: the utterance and the audio it covers, until its answer arrives."""

    utterance: int
    position: int  # bytes of the utterance handed over before the request
    future: asyncio.Future  # -> BackendTranscript
    deadline: float
    link: _Link | None = None  # the connection it was sent on, while that one lives


class _Link:
    """One connection and where its server stream stands relative to the utterance."""

    def __init__(
        self,
        client: ASRClient,
        epoch: int,
        *,
        utterance: int,
        key: Hashable,
        start: int,
        burst: float,
    ) -> None:
        self.client = client
        self.epoch = epoch
        self.opened_at = time.monotonic()
        self.utterance = utterance  # the service's utterance the server stream is on
        self.cursor = start  # bytes of that utterance sent on this connection
        self.server_utterance = 0
        # Server utterance index -> (turn key, utterance-clock seconds of its first sample).
        self.utterances: dict[int, tuple[Hashable, float]] = {0: (key, start / BYTES_PER_SECOND)}
        self.tokens = burst
        self.stamp = time.monotonic()
        self.draining = False  # the server said it is shutting down
        self.failover: Failover | None = None
        # Replayed partials shorter than what was shown are held until this many letters, or
        # until they cover this much audio (connection clock); 0: nothing held.
        self.hold_letters = 0
        self.hold_until_s = 0.0


def _letters(text: str) -> int:
    return len("".join(text.split()))


class RemoteNemotronSTTService(CacheAwareSTTService):
    """Streaming speech-to-text on a remote ASR server (``voice-agent asr-server``).

    Failover to another server (or the same one, restarted) loses no audio of the current
    utterance up to ``replay_secs``; see the module docstring.

    Example::

        stt = RemoteNemotronSTTService(url="ws://asr-host:8765/v1/stream", token="...")
    """

    Settings = RemoteNemotronSTTSettings
    _settings: RemoteNemotronSTTSettings

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        token: str | None = None,
        settings: RemoteNemotronSTTSettings | None = None,
        connect_timeout: float = 5.0,
        initial_connect_wait: float = 2.0,
        reconnect_min_secs: float = 0.25,
        reconnect_max_secs: float = 5.0,
        replay_secs: float = DEFAULT_REPLAY_SECS,
        replay_rate: float = 3.0,
        replay_burst_secs: float = 6.0,
        finalize_timeout: float = 3.0,
        **kwargs,
    ):
        """Initialize the service.

        Args:
            url: WebSocket URL of the ASR server (``ws://host:port`` or ``.../v1/stream``).
            token: Bearer token the server expects, if any.
            settings: Runtime settings.
            connect_timeout: Seconds allowed for one connection attempt.
            initial_connect_wait: How long start waits for the first connection before the
                pipeline goes on (audio is buffered meanwhile).
            reconnect_min_secs: Backoff after the first failed attempt (a lost connection is
                retried at once; attempts go on until the session ends).
            reconnect_max_secs: Longest backoff delay.
            replay_secs: Audio of the current utterance kept for a failover (memory: 32 KB a
                second per session). Longer utterances lose their head on failover.
            replay_rate: Sustained sending rate while catching up, x real time (> 1). Keep it
                below the server's ``max_audio_rate`` (4 by default).
            replay_burst_secs: Audio a new connection may send at once before that rate applies.
                Keep it below the server's ``audio_burst_s`` (10) and the engine's
                ``max_backlog_s`` (10).
            finalize_timeout: Seconds to wait for a final before giving up on it. A failover
                while it waits adds the time its replay needs at ``replay_rate``.
            **kwargs: Passed to ``CacheAwareSTTService`` / ``STTService``.
        """
        if replay_secs <= 0:
            raise ValueError(f"replay_secs must be > 0, got {replay_secs!r}")
        if replay_rate <= 1:
            raise ValueError(f"replay_rate must be > 1 (to catch up), got {replay_rate!r}")
        if replay_burst_secs <= 0:
            raise ValueError(f"replay_burst_secs must be > 0, got {replay_burst_secs!r}")
        super().__init__(settings=settings, **kwargs)
        self._url = url
        self._token = token
        self._connect_timeout = connect_timeout
        self._initial_connect_wait = initial_connect_wait
        self._reconnect_min = reconnect_min_secs
        self._reconnect_max = reconnect_max_secs
        self._replay_bytes = int(replay_secs * BYTES_PER_SECOND) & ~1
        self._replay_rate = replay_rate
        self._replay_burst = replay_burst_secs
        self._finalize_timeout = finalize_timeout

        # The current utterance: its audio (bytes [_audio_start, _pos) of it) and its index.
        self._utterance = 0
        self._head_cuts = 0  # failovers that lost an utterance's head: part of the turn key
        self._audio = bytearray()
        self._audio_start = 0
        self._pos = 0
        self._shown_letters = 0  # longest text of this utterance pushed (partial or final)
        self._heard_speech = False  # the VAD reported speech in this utterance
        self.idle_resets = 0
        self._finals: list[_PendingFinal] = []
        self._link: _Link | None = None
        self._lost: Failover | None = None  # the failover under way
        self._wake = asyncio.Event()
        self._epoch = 0  # connections made so far
        self._connected = asyncio.Event()
        self._connection_task: asyncio.Task | None = None
        self._pump_task: asyncio.Task | None = None
        self._closing = False
        self.connections_made = 0
        self.failovers = 0
        self.replayed_secs = 0.0
        self.lost_audio_secs = 0.0
        self.failover_log: collections.deque[Failover] = collections.deque(maxlen=16)

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is up."""
        return self._connected.is_set()

    @property
    def replay_secs(self) -> float:
        """Audio of the current utterance kept for a failover (seconds)."""
        return self._replay_bytes / BYTES_PER_SECOND

    def _current_key(self) -> Hashable:
        return (self._utterance, self._head_cuts)

    def _set_utterance(self, key: Hashable | None) -> None:
        super()._set_utterance(key)
        self._shown_letters = 0

    # ---- connection ----

    async def _backend_open(self) -> None:
        self._closing = False
        self._set_utterance(self._current_key())
        self._connection_task = self.create_task(self._connection_loop(), name="asr_connection")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._initial_connect_wait)

    async def _backend_close(self) -> None:
        self._closing = True
        link, self._link = self._link, None
        for name in ("_pump_task", "_connection_task"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None and not task.done():
                await self.cancel_task(task)
        if link is not None:
            await link.client.close()
        self._connected.clear()
        for final in self._finals:
            if not final.future.done():
                final.future.cancel()
        self._finals.clear()
        self._audio = bytearray()
        self._set_utterance(None)

    async def _connection_loop(self) -> None:
        failures = 0
        while not self._closing:
            epoch = self._epoch + 1
            client = ASRClient(
                self._url,
                token=self._token,
                open_timeout=self._connect_timeout,
                on_event=lambda event, epoch=epoch: self._on_server_event(event, epoch),
            )
            try:
                await client.connect()
            except ASRRejectedError as exc:
                if exc.permanent:
                    await self.push_error(
                        f"{self.name}: ASR server {self._url} refused the connection: {exc}",
                        force_treat_as_permanent=True,
                    )
                    return
                error = str(exc)
            except Exception as exc:  # refused, reset, timed out, a bad handshake: try again
                error = f"{type(exc).__name__}: {exc}"
            else:
                link = await self._run_connection(client, epoch)
                if self._closing:
                    return
                if time.monotonic() - link.opened_at >= _SHORT_LIVED_S:
                    # Most drops are one server going away while the URL reaches another:
                    # retry at once, the replay is what bounds the delay.
                    failures = 0
                    continue
                error = f"connection lost at once ({self._lost.cause if self._lost else '?'})"
            failures += 1
            if self._lost is not None:
                self._lost.attempts += 1
            delay = min(self._reconnect_max, self._reconnect_min * 2 ** (failures - 1))
            if failures == 1 or failures % 10 == 0:
                await self._report_error(
                    f"ASR server {self._url}: {error}; reconnecting (attempt {failures}, "
                    f"next in {delay:.2f} s)"
                )
            await asyncio.sleep(delay)

    async def _run_connection(self, client: ASRClient, epoch: int) -> _Link:
        self._epoch = epoch
        self.connections_made += 1
        lost, self._lost = self._lost, None
        start = self._audio_start
        if start and lost is not None:
            # The utterance outgrew the replay bound: the new stream hears only its tail, so
            # its text is a new one for the turn logic (nothing pushed can be matched to it).
            self._head_cuts += 1
            self._set_utterance(self._current_key())
        link = _Link(
            client,
            epoch,
            utterance=self._utterance,
            key=self._key,
            start=start,
            burst=self._replay_burst,
        )
        if lost is not None:
            self._begin_failover(link, lost)
        elif start:
            self.lost_audio_secs += start / BYTES_PER_SECOND
            logger.warning(
                f"{self}: connected after more than replay_secs of audio: its first "
                f"{start / BYTES_PER_SECOND:.2f} s are not sent"
            )
        elif self.connections_made > 1:
            logger.info(f"{self}: connected to ASR server {self._url}")
        else:
            logger.debug(f"{self}: connected to ASR server {self._url}")
        self._link = link
        self._connected.set()
        self._wake.set()
        self._pump_task = self.create_task(self._pump(link), name="asr_pump")
        try:
            await client.closed.wait()
        finally:
            self._connected.clear()
            if self._link is link:
                self._link = None
            for final in self._finals:
                if final.link is link:
                    final.link = None  # resent on the next connection
            pump, self._pump_task = self._pump_task, None
            if pump is not None and not pump.done():
                await self.cancel_task(pump)
            if not self._closing:
                self._lost = self._note_loss(link)
        return link

    def _note_loss(self, link: _Link) -> Failover:
        client = link.client
        if link.draining:
            cause = "server shutting down (shutting_down, 1001)"
        else:
            code = client.close_code if client.close_code is not None else 1006
            reason = f" {client.close_reason}" if client.close_reason else ""
            cause = f"connection closed ({code}{reason})"
        lost = Failover(cause, time.monotonic(), _utterance=link.utterance, _sent=link.cursor)
        logger.warning(f"{self}: lost the ASR server connection: {cause}; failing over")
        return lost

    def _begin_failover(self, link: _Link, lost: Failover) -> None:
        now = time.monotonic()
        start = self._audio_start
        sent = max(start, lost._sent) if lost._utterance == self._utterance else start
        lost.reconnected_at = now
        lost.replayed_s = (sent - start) / BYTES_PER_SECOND
        lost.buffered_s = (self._pos - sent) / BYTES_PER_SECOND
        lost.lost_audio_s = start / BYTES_PER_SECOND
        link.failover = lost
        if self._shown_letters and sent > start:
            link.hold_letters = self._shown_letters
            link.hold_until_s = (sent - start) / BYTES_PER_SECOND
        self.failovers += 1
        self.replayed_secs += lost.replayed_s + lost.buffered_s
        self.lost_audio_secs += lost.lost_audio_s
        self.failover_log.append(lost)
        # A final waiting through the outage also waits for the replay to reach its audio.
        for final in self._finals:
            if final.utterance == self._utterance:
                final.deadline += self._pacing_secs(final.position - start)
        if start:
            logger.warning(
                f"{self}: the utterance is longer than replay_secs "
                f"({self.replay_secs:g} s): its first {lost.lost_audio_s:.2f}"
                " s cannot be replayed; the final covers the rest"
            )
        logger.info(
            f"{self}: failover to {self._url} after {now - lost.lost_at:.2f} s "
            f"({lost.attempts} failed attempts; cause: {lost.cause}): replaying "
            f"{lost.replayed_s:.2f} s of the utterance + {lost.buffered_s:.2f} s buffered"
        )

    def _pacing_secs(self, n_bytes: int) -> float:
        """Time the pacing needs to send ``n_bytes`` on a fresh connection."""
        seconds = n_bytes / BYTES_PER_SECOND
        return max(0.0, seconds - self._replay_burst) / self._replay_rate

    # ---- sending ----

    async def _pump(self, link: _Link) -> None:
        """Send the utterance's audio and control messages in order on one connection."""
        try:
            while True:
                self._wake.clear()
                while await self._step(link):
                    pass
                await self._wake.wait()
        except ConnectionError:
            return  # the connection loop notices the close and fails over
        except Exception:
            # A bug here must not leave a connection up that sends nothing: fail over.
            logger.exception(f"{self}: sending to the ASR server failed")
            link.client.abort()

    async def _step(self, link: _Link) -> bool:
        """Send the next message due on ``link``; False when nothing is due."""
        if link.utterance != self._utterance:
            # Accepted utterances: one reset starts the current one (audio of the old ones
            # not sent yet is moot: their finals are in).
            await link.client.reset()
            link.server_utterance += 1
            link.utterances[link.server_utterance] = (self._key, 0.0)
            link.utterances.pop(link.server_utterance - 2, None)
            link.utterance = self._utterance
            link.cursor = 0
            link.hold_letters = 0
            return True
        if link.cursor < self._audio_start:
            # Only if this connection stalled for replay_secs: what it missed is gone.
            missed = self._audio_start - link.cursor
            self.lost_audio_secs += missed / BYTES_PER_SECOND
            logger.warning(f"{self}: {missed / BYTES_PER_SECOND:.2f} s of audio not sent in time")
            link.cursor = self._audio_start
        target = self._pos
        for final in self._finals:
            if final.utterance != link.utterance or final.link is not None or final.future.done():
                continue
            if final.position <= link.cursor:
                final.link = link
                try:
                    answer = await link.client.send_finalize()
                except ConnectionError:
                    final.link = None
                    raise
                answer.add_done_callback(
                    lambda done, final=final: self._on_final_answer(link, final, done)
                )
                return True
            target = min(target, final.position)
        if link.cursor >= target:
            return False
        size = min(target - link.cursor, _PIECE_BYTES)
        await self._pace(link, size)
        if link.utterance != self._utterance or link.cursor < self._audio_start:
            return True  # reset or trimmed while waiting: start over
        offset = link.cursor - self._audio_start
        await link.client.send_audio(bytes(self._audio[offset : offset + size]))
        link.cursor += size
        return True

    async def _pace(self, link: _Link, size: int) -> None:
        """Wait until ``size`` bytes fit the connection's token bucket, then take them."""
        need = size / BYTES_PER_SECOND
        while True:
            now = time.monotonic()
            link.tokens = min(
                self._replay_burst, link.tokens + (now - link.stamp) * self._replay_rate
            )
            link.stamp = now
            if link.tokens >= need:
                link.tokens -= need
                return
            await asyncio.sleep((need - link.tokens) / self._replay_rate)

    def _on_final_answer(self, link: _Link, final: _PendingFinal, answer: asyncio.Future) -> None:
        if final.future.done():
            return
        if final.link is link:
            final.link = None
        error = None if answer.cancelled() else answer.exception()
        if answer.cancelled() or isinstance(error, ConnectionError):
            return  # the connection went: the request is sent again on the next one
        if isinstance(error, ASRServerError):
            if link.draining or not link.client.connected:
                return  # the server failed it on its way out: the next one answers it
            final.future.set_exception(error)
            return
        if error is not None:
            final.future.set_exception(error)
            return
        final.future.set_result(self._transcript(link, answer.result()))

    def _transcript(self, link: _Link, event: dict[str, Any]) -> BackendTranscript:
        key, origin = link.utterances.get(event.get("utterance"), (("stale",), 0.0))
        return BackendTranscript(str(event.get("text", "")), key, _words(event, origin))

    # ---- server events ----

    async def _on_server_event(self, event: dict[str, Any], epoch: int) -> None:
        link = self._link
        if link is None or link.epoch != epoch:
            return  # an old connection: superseded
        kind = event.get("type")
        if kind == "partial":
            await self._on_partial(link, event)
        elif kind == "error":
            if event.get("code") == E_SHUTTING_DOWN:
                # Fail over now rather than after the server's close handshake.
                logger.info(f"{self}: ASR server is shutting down; failing over")
                link.draining = True
                link.client.abort()
                return
            await self._report_error(
                f"ASR server error {event.get('code')}: {event.get('message')}"
            )

    async def _on_partial(self, link: _Link, event: dict[str, Any]) -> None:
        key, _ = link.utterances.get(event.get("utterance"), (None, 0.0))
        if key is None or key != self._key:
            return
        text = str(event.get("text", ""))
        failover = link.failover
        if failover is not None and failover.first_partial_at is None:
            failover.first_partial_at = time.monotonic()
            logger.info(
                f"{self}: first partial on the new connection "
                f"{failover.time_to_first_partial_s:.2f} s after the drop ({failover.cause})"
            )
        if link.hold_letters:
            covered = float(event.get("audio_end_s") or 0.0)
            if _letters(text) < link.hold_letters and covered < link.hold_until_s:
                return  # the replay has not reached what was shown yet
            link.hold_letters = 0
            if failover is not None:
                failover.caught_up_at = time.monotonic()
        self._shown_letters = max(self._shown_letters, _letters(text))
        await self._on_backend_partial(BackendTranscript(text, key))

    # ---- backend hooks ----

    async def _on_speech_started(self) -> None:
        self._heard_speech = True
        await super()._on_speech_started()

    async def _backend_send(self, audio: bytes) -> None:
        if (
            not self._heard_speech
            and not self._finals
            and self._pos + len(audio) > _IDLE_RESET_SECS * BYTES_PER_SECOND
        ):
            keep = (int(CARRY_OVER_SECS * BYTES_PER_SECOND) & ~1) - len(audio)
            tail = bytes(self._audio[-keep:]) if keep > 0 else b""
            await self._backend_reset()
            self.idle_resets += 1
            audio = tail + audio
        self._audio += audio
        self._pos += len(audio)
        excess = len(self._audio) - self._replay_bytes
        if excess > _TRIM_SLACK_BYTES:
            del self._audio[:excess]
            self._audio_start += excess
        self._wake.set()

    async def _backend_finalize(self) -> BackendTranscript | None:
        self._heard_speech = True  # a VAD stop: this utterance is speech, never idle-reset
        final = _PendingFinal(
            utterance=self._utterance,
            position=self._pos,
            future=asyncio.get_running_loop().create_future(),
            deadline=time.monotonic() + self._finalize_timeout,
        )
        self._finals.append(final)
        self._wake.set()
        try:
            # The deadline can move (a failover adds its replay time): wait in steps.
            while not final.future.done():
                remaining = final.deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no final from the ASR server within {self._finalize_timeout:g} s"
                        + ("" if self.connected else " (disconnected)")
                    )
                await asyncio.wait([final.future], timeout=remaining)
            result = final.future.result()
        finally:
            with contextlib.suppress(ValueError):
                self._finals.remove(final)
            if not final.future.done():
                final.future.cancel()
        logger.debug(f"{self}: final {result.text!r} (key {result.key}, current {self._key})")
        if result.key == self._key:
            self._shown_letters = max(self._shown_letters, _letters(result.text))
        return result

    async def _backend_reset(self) -> None:
        self._utterance += 1
        self._heard_speech = False
        self._audio = bytearray()
        self._audio_start = self._pos = 0
        self._set_utterance(self._current_key())
        self._wake.set()


def _words(event: dict, origin_s: float = 0.0) -> tuple[WordTiming, ...] | None:
    """A final's word times, moved from the connection clock to the utterance's own.

    Args:
        event: The ``final`` event (times on the connection clock, ``audio_start_s`` the
            server utterance's start on it).
        origin_s: Utterance-clock time of the server utterance's first sample (a replay that
            could not start at the utterance's start).
    """
    words = event.get("words")
    if not isinstance(words, list):
        return None
    shift = origin_s - float(event.get("audio_start_s") or 0.0)
    try:
        return tuple(
            WordTiming(
                str(w["word"]),
                round(float(w["start_s"]) + shift, 4),
                round(float(w["end_s"]) + shift, 4),
            )
            for w in words
        )
    except (KeyError, TypeError, ValueError):  # a server of another version: text only
        return None
