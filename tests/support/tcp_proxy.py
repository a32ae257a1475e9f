"""A tiny TCP load balancer on 127.0.0.1, for failover tests and benchmarks.

It is a real proxy (bytes are copied between two real sockets), standing in for what sits in
front of a cluster of ASR servers (HAProxy, a Kubernetes Service): each new connection goes to
the next upstream, round robin, skipping upstreams that refuse. :meth:`TcpProxy.cut` drops
every connection through one upstream without a close handshake, which is what clients of a
killed server or a lost node see (1006).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class TcpProxy:
    """``proxy = TcpProxy([("127.0.0.1", a), ("127.0.0.1", b)]); await proxy.start()``."""

    def __init__(self, upstreams: list[tuple[str, int]], *, host: str = "127.0.0.1") -> None:
        """Initialize the proxy.

        Args:
            upstreams: ``(host, port)`` of each server, tried in turn for each connection.
            host: Interface to listen on.
        """
        self.upstreams = list(upstreams)
        self.host = host
        self.port = 0
        self._rr = itertools.count()
        self._server: asyncio.Server | None = None
        # Live pipes: (upstream, client transport, server transport).
        self._pipes: set[tuple[tuple[str, int], asyncio.WriteTransport, asyncio.WriteTransport]]
        self._pipes = set()
        self._tasks: set[asyncio.Task] = set()
        self.routed: list[tuple[str, int]] = []  # upstream of each connection, in order

    def url(self, path: str = "/v1/stream") -> str:
        """``ws://host:port/path`` through the proxy."""
        return f"ws://{self.host}:{self.port}{path}"

    async def start(self) -> None:
        """Listen (on the same port again after :meth:`pause`)."""
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def pause(self) -> None:
        """Stop listening: new connections are refused until :meth:`start`."""
        if self._server is not None:
            # Not wait_closed(): from Python 3.12 on it also waits for the live connections.
            self._server.close()
            self._server = None

    def cut(self, upstream: tuple[str, int] | None = None) -> int:
        """Drop every connection through ``upstream`` (all if None), both sides, no handshake.

        Returns:
            How many connections were dropped.
        """
        dropped = [p for p in self._pipes if upstream is None or p[0] == upstream]
        for pipe in dropped:
            self._pipes.discard(pipe)
            pipe[1].abort()
            pipe[2].abort()
        return len(dropped)

    def live(self, upstream: tuple[str, int] | None = None) -> int:
        """Connections open through ``upstream`` (all if None)."""
        return sum(1 for p in self._pipes if upstream is None or p[0] == upstream)

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        await self.pause()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = next(self._rr)
        for i in range(len(self.upstreams)):
            upstream = self.upstreams[(first + i) % len(self.upstreams)]
            try:
                up_reader, up_writer = await asyncio.open_connection(*upstream)
            except OSError:
                continue  # a dead upstream: the next one gets the connection
            break
        else:
            writer.transport.abort()
            return
        self.routed.append(upstream)
        pipe = (upstream, writer.transport, up_writer.transport)
        self._pipes.add(pipe)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            self._pipes.discard(pipe)
            if task is not None:
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # One side finished: pass the end on (a half-close), the other copy ends by itself.
        with contextlib.suppress(Exception):
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
