"""Extra front-end processes of ``voice-agent asr-server --workers N``.

One Python event loop handles a few thousand audio messages per second (64 streams of 20 ms
messages took 27% of a core here), far from what one GPU's engine can serve. With ``--workers``
the server runs N front ends on the same port (SO_REUSEPORT: the kernel spreads connections over
them), each connected to the one engine process over its own socket. The first front end is the
main process; this module runs the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from services.asr.engine.config import EngineConfig
from services.asr.engine.process import EngineProcess

from .server import ASRServer, ServerConfig

logger = logging.getLogger(__name__)


def run_front_worker(
    index: int,
    sock: socket.socket,
    engine_config: EngineConfig,
    server_config: ServerConfig,
    ready: Any,
    init: Callable[[], None] | None = None,
) -> None:
    """Entry point of front end ``index``: serve WebSocket clients until SIGTERM.

    ``ready`` (a multiprocessing Event) is set once the port is bound.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    if init is not None:
        init()
    asyncio.run(_serve(index, sock, engine_config, server_config, ready))


async def _serve(
    index: int,
    sock: socket.socket,
    engine_config: EngineConfig,
    server_config: ServerConfig,
    ready: Any,
) -> None:
    engine = EngineProcess(engine_config)
    await engine.attach(sock)
    server = ASRServer(engine, server_config)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    logger.info("ASR front end %d serving on port %d", index, server.port)
    ready.set()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        await engine.aclose()
