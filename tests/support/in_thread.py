"""Run an asyncio test server (the fake LLM endpoints) on an event loop of its own thread.

Module-scoped fixtures outlive each test's event loop, and a blocking wait for a child process
(``start_agent``) would stall a server on the test's own loop; on its own thread it answers
whatever the test's loop is doing.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Protocol, TypeVar


class _AsyncServer(Protocol):
    async def start(self): ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=_AsyncServer)


class InThread:
    """``with InThread(FakeOpenAIServer()) as server: ...``: started on enter, stopped on exit."""

    def __init__(self, server: S) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self.server

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
