"""The ASR server as a Ray Serve deployment: one replica per GPU, the same protocol.

Each replica loads one engine (as ``asr-server`` does: in its own process unless
``in_process``) and serves it through :class:`ASRServer`, so auth, limits, close codes,
``/health``, ``/ready`` and ``/metrics`` are the same code as the single-box server. A WebSocket
stays on its replica for its life and counts as one ongoing request, so Serve's autoscaling on
ongoing requests scales on live streams.
"""

# No ``from __future__ import annotations``: FastAPI reads the route parameters' annotations
# (Request, WebSocket) at run time, and Serve's ingress wrapper cannot resolve them as strings.
import asyncio
import contextlib
import logging
import time
from typing import Any

import ray
from fastapi import FastAPI, Request, WebSocket
from ray import serve
from starlette.responses import Response

from services.asr.server import ASRServer, ServerConfig
from services.asr.server import protocol as P
from services.asr.server.asgi import probe_response, serve_websocket

from .options import PROBE_HEADROOM, ReplicaOptions

logger = logging.getLogger(__name__)

api = FastAPI(title="Nemotron streaming ASR", docs_url=None, redoc_url=None, openapi_url=None)


def replica_name() -> str:
    """``<replica id>@<node id prefix>``: which replica, and on which Ray node."""
    replica = serve.get_replica_context().replica_id.unique_id
    return f"{replica}@{ray.get_runtime_context().get_node_id()[:12]}"


async def open_engine(options: ReplicaOptions) -> Any:
    """Load the engine as ``asr-server`` does (its own process, or this one)."""
    config = options.engine_config()
    if options.in_process:
        from services.asr.engine import get_engine

        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        return await asyncio.get_running_loop().run_in_executor(None, get_engine, config)
    from services.asr.engine import EngineProcess

    engine = EngineProcess(config, torch_threads=options.torch_threads)
    await engine.start()
    return engine


@serve.deployment(
    name="asr",
    max_ongoing_requests=256 + PROBE_HEADROOM,
    health_check_period_s=5,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(api)
class ASRReplica:
    """One engine behind Serve's HTTP ingress; ``build_app`` makes the application."""

    async def __init__(self, options: ReplicaOptions) -> None:
        started = time.perf_counter()
        self.options = options
        self.engine = await open_engine(options)
        config = ServerConfig(
            token=options.resolve_token(),
            max_streams=options.max_streams,
            max_message_bytes=options.max_message_bytes,
            idle_timeout=options.idle_timeout,
            max_audio_rate=options.max_audio_rate,
            replica=replica_name(),
        )
        self.server = ASRServer(self.engine, config)
        logger.info(
            "ASR replica %s ready in %.1f s (%s, max %d streams, auth %s)",
            config.replica,
            time.perf_counter() - started,
            self.engine.config.model,
            config.max_streams,
            "on" if config.token else "off",
        )

    # ---- probes and metrics (the server's own answers) ----

    @api.get("/health")
    async def health(self, request: Request) -> Response:
        return probe_response(self.server, "/health", request)

    @api.get("/ready")
    async def ready(self, request: Request) -> Response:
        return probe_response(self.server, "/ready", request)

    @api.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        return probe_response(self.server, "/metrics", request)

    # ---- streams ----

    @api.websocket("/v1/stream")
    async def stream(self, websocket: WebSocket) -> None:
        await serve_websocket(self.server, websocket, path="/v1/stream")

    @api.websocket("/")
    async def stream_at_root(self, websocket: WebSocket) -> None:
        await serve_websocket(self.server, websocket, path="/")

    @api.websocket(P.REALTIME_PATH)
    async def realtime(self, websocket: WebSocket) -> None:
        await serve_websocket(self.server, websocket, path=P.REALTIME_PATH)

    # ---- Serve hooks ----

    async def check_health(self) -> None:
        """Serve restarts a replica whose engine stopped answering."""
        if getattr(self.engine, "is_shutdown", False):
            raise RuntimeError("the ASR engine is shut down")
        self.engine.stats()  # raises when the engine process is gone

    async def __del__(self) -> None:
        # Streams still open when Serve stops the replica are told it is going away (1001).
        with contextlib.suppress(Exception):
            await self.server.stop()
        if self.options.in_process:
            self.engine.shutdown()
        else:
            await self.engine.aclose()
