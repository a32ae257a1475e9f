"""``voice-agent asr-server``: serve the batched ASR engine to many bots over WebSocket.

Engine settings come from the config's ``stt.*`` keys (file, env, ``--set``) unless a flag here
overrides them. The token is ``--token``, else ``$VOICE_AGENT_ASR_TOKEN``, else
``stt.server_token`` (the same value the bots send). Protocol: docs/asr-protocol.md.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import ipaddress
import os
import signal
import time
from typing import Any

from agent.cli import EXTRA_COMMANDS, _add_config_options, exit_on_stop_signals, resolve
from agent.config import ConfigError
from agent.logs import setup_logging
from pipelines.checks import (
    StartupError,
    check_device,
    check_model_source,
    check_port_free,
    require,
)

TOKEN_ENV = "VOICE_AGENT_ASR_TOKEN"
_PORT_FIX = "stop what listens there (another asr-server?), or pick another port: --port N"
_MODEL_FIX = (
    "set --model (or stt.model) to an existing .nemo file or a reachable Hugging Face id, and "
    "--device to one this machine has; voice-agent doctor checks both"
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``voice-agent asr-server``."""
    parser.description = (
        "Serve the cache-aware ASR engine over WebSocket (one engine, many bots). "
        "Health: GET /health, /ready; Prometheus: GET /metrics; stream: ws://HOST:PORT/v1/stream."
    )
    _add_config_options(parser)
    add_listen_options(parser, port=8765)
    add_engine_options(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="front-end processes sharing the port (SO_REUSEPORT), all feeding the one engine; "
        "one event loop carries a few hundred streams (default 1)",
    )


def add_listen_options(parser: argparse.ArgumentParser, *, port: int) -> None:
    """``--host`` and ``--port`` of a server command."""
    parser.add_argument(
        "--host",
        dest="asr_host",
        metavar="HOST",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1; use 0.0.0.0 only with --token)",
    )
    parser.add_argument(
        "--port",
        dest="asr_port",
        metavar="PORT",
        type=int,
        default=port,
        help=f"default {port}",
    )


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The engine and per-stream limit options (``asr-server`` and ``asr-cluster``)."""
    parser.add_argument("--model", help="stt.model: Hugging Face id or path to a .nemo")
    parser.add_argument("--device", help="stt.device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="stt.dtype")
    parser.add_argument(
        "--chunk-ms", type=int, choices=[80, 160, 560, 1120], help="stt.chunk_ms (streaming chunk)"
    )
    parser.add_argument(
        "--encoder",
        choices=["fast", "nemo"],
        help="stt.encoder: fast (K/V-cached step, default) or nemo (NeMo's own step)",
    )
    parser.add_argument(
        "--token", help=f"bearer token clients must send (default ${TOKEN_ENV}, stt.server_token)"
    )
    parser.add_argument(
        "--max-streams", type=int, default=256, help="concurrent streams (default 256)"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=64 * 1024,
        help="largest WebSocket message accepted (default 65536 = 2 s of audio)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="close connections silent for this many seconds (default 30; 0 disables)",
    )
    parser.add_argument(
        "--max-audio-rate",
        type=float,
        default=4.0,
        help="sustained audio rate allowed per stream, x real time (default 4)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=None, help="most streams per encoder call (engine)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="capture the encoder step in CUDA graphs"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=None,
        help="least time between two engine steps, so more streams share a batch "
        "(default 30 on CPU, 0 on CUDA; finals never wait for it)",
    )
    parser.add_argument(
        "--final-rows",
        type=int,
        default=None,
        help="finals per step that run inside the live steps' encoder calls (default: "
        "max_streams/16 in 8..256 on CUDA, 4 on CPU; 0: every final in calls of its own)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads (CPU serving; 1 is best on small shared machines)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the engine in the server's process (default: its own process, so the "
        "network loop and the model never wait for each other)",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace, stt: Any) -> str | None:
    """``--token``, else ``$VOICE_AGENT_ASR_TOKEN``, else ``stt.server_token``; None: no auth."""
    secret = stt.server_token.get_secret_value() if stt.server_token else None
    return args.token or os.environ.get(TOKEN_ENV) or secret or None


def dtype_chosen(args: argparse.Namespace, resolved: Any) -> bool:
    """The dtype was set (flag, file, env): otherwise bf16 becomes fp32 on a CPU."""
    return bool(args.dtype) or resolved.sources.get("stt.dtype", "default") != "default"


def engine_options(args: argparse.Namespace, stt: Any) -> dict[str, Any]:
    """The engine options (``serving_engine_config``'s names) of the flags over ``stt.*``.

    ``voice-agent asr-cluster`` passes the same dict to every replica.
    """
    return {
        "model": args.model or stt.model,
        "device": args.device or stt.device,
        "dtype": args.dtype or stt.dtype,
        "chunk_ms": args.chunk_ms or stt.chunk_ms,
        "encoder": args.encoder or stt.encoder,
        "max_streams": args.max_streams,
        "cuda_graphs": args.cuda_graphs,
        "max_batch": args.max_batch or None,
        "batch_window_ms": args.batch_window_ms,
        "final_rows": args.final_rows,
    }


def handler(args: argparse.Namespace) -> int:
    """Load the engine, serve until SIGINT/SIGTERM, then close every stream cleanly.

    Raises:
        ConfigError: A bad option.
        StartupError: A predictable failure (no CUDA, no model, port taken), found before the
            model loads where possible.
    """
    from loguru import logger

    from services.asr.engine.process import EngineProcessError
    from services.asr.server import ServerConfig
    from services.asr.server.engine_options import serving_engine_config

    resolved = resolve(args)
    settings = resolved.settings
    setup_logging(settings.log_level)
    # From here SIGTERM and SIGINT end the process through its clean-up, loading or not.
    exit_on_stop_signals()
    stt = settings.stt
    token = resolve_token(args, stt)
    if args.max_streams < 1:
        raise ConfigError(f"--max-streams {args.max_streams}: must be >= 1")
    if args.workers < 1 or (args.workers > 1 and args.in_process):
        raise ConfigError("--workers must be >= 1, and needs the engine in its own process")
    if not _is_loopback(args.asr_host) and not token:
        logger.warning(
            f"Serving on {args.asr_host} without a token: anyone who can reach this port can use "
            f"the ASR. Set --token or ${TOKEN_ENV}."
        )
    config = serving_engine_config(
        engine_options(args, stt), dtype_chosen=dtype_chosen(args, resolved)
    )
    # What is sure to fail fails now, in one line, not after a model load.
    require(
        check_device(
            "--device" if args.device else "stt.device", config.device, cpu_hint="--device cpu"
        )
    )
    require(check_model_source("--model" if args.model else "stt.model", config.model))
    require(check_port_free("port", args.asr_host, args.asr_port, fix=_PORT_FIX))
    server_config = ServerConfig(
        host=args.asr_host,
        port=args.asr_port,
        token=token,
        max_streams=args.max_streams,
        max_message_bytes=args.max_message_bytes,
        idle_timeout=args.idle_timeout,
        max_audio_rate=args.max_audio_rate,
        reuse_port=args.workers > 1,
    )
    where = "in this process" if args.in_process else "in its own process"
    logger.info(
        f"Loading ASR engine {config.model} on {config.device} ({config.dtype}, "
        f"{config.chunk_ms} ms chunks, {config.encoder} encoder) {where}..."
    )
    try:
        return asyncio.run(_serve(args, config, server_config, settings.log_level))
    except EngineProcessError as exc:
        raise StartupError(str(exc), _MODEL_FIX) from exc
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken between the check above and the bind.
        raise StartupError(f"port {args.asr_port} on {args.asr_host} is in use", _PORT_FIX) from exc


async def _serve(args, config, server_config, log_level: str) -> int:
    from loguru import logger

    from services.asr.engine import EngineProcess, get_engine
    from services.asr.server import ASRServer

    started = time.perf_counter()
    if args.in_process:
        from services.asr.engine.loader import ModelLoadError

        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(None, get_engine, config)
        except ModelLoadError as exc:
            raise StartupError(str(exc), _MODEL_FIX) from exc
    else:
        engine = EngineProcess(
            config,
            torch_threads=args.torch_threads,
            init=functools.partial(setup_logging, log_level),
        )
        await engine.start(extra_connections=args.workers - 1)
    logger.info(f"ASR engine ready in {time.perf_counter() - started:.1f} s")
    server = ASRServer(engine, server_config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fronts = []
    try:
        if args.workers > 1:
            server.starting_reason = "starting the other front-end processes"
        await server.start()
        if args.workers > 1:
            fronts = await _start_front_ends(engine, server, config, log_level)
            server.starting_reason = None
        logger.info(
            f"ASR server ready: ws://{server.config.host}:{server.port}/v1/stream "
            f"(health http://{server.config.host}:{server.port}/health)"
            + (f", {args.workers} front-end processes" if args.workers > 1 else "")
        )
        await stop.wait()
        logger.info("Shutting down the ASR server...")
        for front in fronts:
            front.terminate()
        await server.stop()
    finally:
        for front in fronts:
            await loop.run_in_executor(None, front.join, 10)
            if front.is_alive():
                front.kill()
        if args.in_process:
            engine.shutdown()
        else:
            await engine.aclose()
    return 0


async def _start_front_ends(engine, server, config, log_level: str) -> list:
    """Spawn a front end for each spare engine connection, on the main server's port.

    Returns once every one is serving, so "ready" means all of them take connections.
    """
    import dataclasses
    import multiprocessing

    from services.asr.server.front_worker import run_front_worker
    from services.lifetime import on_lasting_thread, run_as_child

    context = multiprocessing.get_context("spawn")
    fronts, events = [], []
    for index, sock in enumerate(engine.spare_sockets, start=1):
        front_config = dataclasses.replace(server.config, port=server.port, front_end=index)
        ready = context.Event()
        front = context.Process(
            # It dies with this process, even one killed with SIGKILL (services/lifetime.py).
            target=run_as_child,
            args=(os.getpid(), run_front_worker, index, sock, config, front_config, ready),
            kwargs={"init": functools.partial(setup_logging, log_level)},
            name=f"asr-front-{index}",
            daemon=True,
        )
        on_lasting_thread(front.start)
        sock.close()  # the front end holds its own copy
        fronts.append(front)
        events.append(ready)
    loop = asyncio.get_running_loop()
    for index, ready in enumerate(events, start=1):
        if not await loop.run_in_executor(None, ready.wait, 120):
            raise RuntimeError(f"ASR front end {index} did not start; see the log above")
    return fronts


EXTRA_COMMANDS["asr-server"] = (configure_parser, handler)
