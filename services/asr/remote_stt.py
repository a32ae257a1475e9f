"""Remote cache-aware Nemotron STT: the same Pipecat service, on a shared ASR server.

Many bot processes stream into one ``voice-agent asr-server`` (one engine, one GPU). Frames,
finals and metrics are the same as :class:`~services.asr.nemotron_stt.NemotronSTTService` (the
turn logic lives in :mod:`services.asr.stt_base`); this class adds the connection: it reconnects
with exponential backoff, keeps the last ``buffer_secs`` of audio while disconnected and sends
it once connected again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass
from typing import Any

from loguru import logger

from services.asr.engine.events import WordTiming
from services.asr.server.client import ASRClient, ASRRejectedError
from services.asr.server.protocol import BYTES_PER_SECOND, E_SHUTTING_DOWN
from services.asr.stt_base import BackendTranscript, CacheAwareSTTService, CacheAwareSTTSettings

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"

__all__ = ["DEFAULT_URL", "RemoteNemotronSTTService", "RemoteNemotronSTTSettings"]


@dataclass
class RemoteNemotronSTTSettings(CacheAwareSTTSettings):
    """Runtime settings of :class:`RemoteNemotronSTTService` (model, language, interim_results)."""


class RemoteNemotronSTTService(CacheAwareSTTService):
    """Streaming speech-to-text on a remote ASR server (``voice-agent asr-server``).

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
        buffer_secs: float = 2.0,
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
            reconnect_min_secs: First backoff delay after a lost connection.
            reconnect_max_secs: Longest backoff delay (attempts go on until the session ends).
            buffer_secs: Audio kept while disconnected and sent after reconnecting.
            finalize_timeout: Seconds to wait for a final before giving up on it.
            **kwargs: Passed to ``CacheAwareSTTService`` / ``STTService``.
        """
        super().__init__(settings=settings, **kwargs)
        self._url = url
        self._token = token
        self._connect_timeout = connect_timeout
        self._initial_connect_wait = initial_connect_wait
        self._reconnect_min = reconnect_min_secs
        self._reconnect_max = reconnect_max_secs
        self._buffer_bytes = int(buffer_secs * BYTES_PER_SECOND)
        self._finalize_timeout = finalize_timeout

        self._client: ASRClient | None = None
        self._epoch = 0  # connections made so far; part of every utterance key
        self._utterance = 0
        self._connected = asyncio.Event()
        self._connection_task: asyncio.Task | None = None
        self._pump_task: asyncio.Task | None = None
        # Outgoing audio and control messages, in order: bytes | ("finalize", future) | "reset".
        self._outbox: collections.deque[Any] = collections.deque()
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._closing = False
        self.connections_made = 0

    @property
    def connected(self) -> bool:
        """Whether a connection to the server is up."""
        return self._connected.is_set()

    # ---- connection ----

    async def _backend_open(self) -> None:
        self._closing = False
        self._connection_task = self.create_task(self._connection_loop(), name="asr_connection")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._initial_connect_wait)

    async def _backend_close(self) -> None:
        self._closing = True
        client, self._client = self._client, None
        for name in ("_pump_task", "_connection_task"):
            task = getattr(self, name)
            setattr(self, name, None)
            if task is not None and not task.done():
                await self.cancel_task(task)
        if client is not None:
            await client.close()
        self._connected.clear()
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
            except (OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                failures = 0
                await self._run_connection(client, epoch)
                if self._closing:
                    return
                error = f"connection lost (close code {client.close_code})"
            failures += 1
            delay = min(self._reconnect_max, self._reconnect_min * 2 ** (failures - 1))
            if failures == 1 or failures % 10 == 0:
                await self._report_error(
                    f"ASR server {self._url}: {error}; reconnecting (attempt {failures}, "
                    f"next in {delay:.2f} s)"
                )
            await asyncio.sleep(delay)

    async def _run_connection(self, client: ASRClient, epoch: int) -> None:
        self._epoch = epoch
        self._utterance = 0
        self._client = client
        self.connections_made += 1
        # A new server stream: nothing of this utterance has been pushed on it yet, and control
        # messages queued for the old stream mean nothing to it (audio is kept and sent).
        self._set_utterance((epoch, 0))
        for item in [i for i in self._outbox if not isinstance(i, bytes)]:
            self._outbox.remove(item)
            if isinstance(item, tuple) and not item[1].done():
                item[1].cancel()
        self._connected.set()
        if self.connections_made > 1:
            logger.info(f"{self}: reconnected to ASR server {self._url}")
        else:
            logger.debug(f"{self}: connected to ASR server {self._url}")
        self._pump_task = self.create_task(self._pump(client), name="asr_pump")
        try:
            await client.closed.wait()
        finally:
            self._connected.clear()
            self._client = None
            pump, self._pump_task = self._pump_task, None
            if pump is not None and not pump.done():
                await self.cancel_task(pump)

    async def _pump(self, client: ASRClient) -> None:
        """Send queued audio and control messages in order."""
        while True:
            await self._outbox_ready.wait()
            while self._outbox:
                item = self._outbox[0]
                try:
                    if isinstance(item, bytes):
                        await client.send_audio(item)
                    elif item == "reset":
                        await client.reset()
                    else:
                        _, holder = item
                        if not holder.done():
                            holder.set_result(await client.send_finalize())
                except ConnectionError:
                    return  # kept in the outbox for the next connection
                self._outbox.popleft()
                if isinstance(item, bytes):
                    self._outbox_bytes -= len(item)
            self._outbox_ready.clear()

    async def _on_server_event(self, event: dict[str, Any], epoch: int) -> None:
        kind = event.get("type")
        if kind == "partial":
            key = (epoch, event.get("utterance"))
            await self._on_backend_partial(BackendTranscript(str(event.get("text", "")), key))
        elif kind == "error":
            if event.get("code") == E_SHUTTING_DOWN:
                logger.info(f"{self}: ASR server is shutting down; will reconnect")
                return
            await self._report_error(
                f"ASR server error {event.get('code')}: {event.get('message')}"
            )

    # ---- backend hooks ----

    async def _backend_send(self, audio: bytes) -> None:
        self._outbox.append(bytes(audio))
        self._outbox_bytes += len(audio)
        # While disconnected, keep only the most recent audio (control messages are moot then).
        while self._outbox_bytes > self._buffer_bytes and self._outbox:
            dropped = self._outbox.popleft()
            if isinstance(dropped, bytes):
                self._outbox_bytes -= len(dropped)
            elif isinstance(dropped, tuple) and not dropped[1].done():
                dropped[1].cancel()
        self._outbox_ready.set()

    async def _backend_finalize(self) -> BackendTranscript | None:
        if not self._connected.is_set():
            return None
        epoch = self._epoch
        holder: asyncio.Future = asyncio.get_running_loop().create_future()
        self._outbox.append(("finalize", holder))
        self._outbox_ready.set()
        try:
            inner = await asyncio.wait_for(holder, self._finalize_timeout)
            event = await asyncio.wait_for(inner, self._finalize_timeout)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this final was superseded: let the cancellation through
            raise ConnectionError("the ASR server connection was lost before the final") from None
        except TimeoutError:
            raise TimeoutError(
                f"no final from the ASR server within {self._finalize_timeout:g} s"
            ) from None
        return BackendTranscript(
            str(event.get("text", "")), (epoch, event.get("utterance")), _words(event)
        )

    async def _backend_reset(self) -> None:
        if not self._connected.is_set():
            return  # the next connection starts a fresh stream anyway
        self._outbox.append("reset")
        self._outbox_ready.set()
        self._utterance += 1
        self._set_utterance((self._epoch, self._utterance))


def _words(event: dict) -> tuple[WordTiming, ...] | None:
    """A final's word times, moved from the connection clock to the utterance's own."""
    words = event.get("words")
    if not isinstance(words, list):
        return None
    origin = float(event.get("audio_start_s") or 0.0)
    try:
        return tuple(
            WordTiming(
                str(w["word"]),
                round(float(w["start_s"]) - origin, 4),
                round(float(w["end_s"]) - origin, 4),
            )
            for w in words
        )
    except (KeyError, TypeError, ValueError):  # a server of another version: text only
        return None
