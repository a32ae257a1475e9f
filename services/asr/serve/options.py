"""The options of the Ray Serve ASR application, checked before anything is deployed.

They are ``voice-agent asr-server``'s options under the same names (flags with underscores):
the engine's (``engine_options.ENGINE_OPTIONS``), the server's limits, and how much of a node
one replica takes. Unknown names are refused, so a typo in ``serve.yaml`` fails at deploy time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.asr.server.engine_options import ENGINE_OPTIONS, serving_engine_config
from services.asr.server.protocol import TOKEN_ENV

SERVER_OPTIONS = ("max_message_bytes", "idle_timeout", "max_audio_rate", "token")
PROCESS_OPTIONS = ("in_process", "torch_threads")
# How one replica is placed and how many there are (Serve's own deployment settings).
PLACEMENT_OPTIONS = (
    "num_gpus",
    "num_cpus",
    "resources",
    "num_replicas",
    "autoscaling_config",
    "max_ongoing_requests",
    "graceful_shutdown_timeout_s",
    "name",
)
ALL_OPTIONS = ENGINE_OPTIONS + SERVER_OPTIONS + PROCESS_OPTIONS + PLACEMENT_OPTIONS
# Ongoing requests a replica takes beyond its streams: probes (/health, /ready, /metrics) and
# the one connection that is refused with 1013 when every stream slot is in use.
PROBE_HEADROOM = 16


@dataclass(frozen=True)
class ReplicaOptions:
    """What one replica needs to build its engine and server (picklable, no secrets).

    Attributes:
        engine: Engine options by ``ENGINE_OPTIONS`` name (None: default).
        dtype_chosen: The dtype was set (else bf16 becomes fp32 on a CPU replica).
        max_message_bytes: Largest WebSocket message accepted.
        idle_timeout: Seconds of silence before a stream is closed.
        max_audio_rate: Sustained audio rate per stream, x real time.
        in_process: The engine runs in the replica's process (default: its own process, as
            ``asr-server`` does, so the network loop and the model never wait for each other).
        torch_threads: torch intra-op threads of the engine (None: torch's default).
        token_env: Environment variable holding the bearer token (read in the replica).
        token: A token given in the options (the environment is the better place).
    """

    engine: Mapping[str, Any] = field(default_factory=dict)
    dtype_chosen: bool = False
    max_message_bytes: int = 64 * 1024
    idle_timeout: float = 30.0
    max_audio_rate: float = 4.0
    in_process: bool = False
    torch_threads: int | None = None
    token_env: str = TOKEN_ENV
    token: str | None = None

    @property
    def max_streams(self) -> int:
        return int(self.engine.get("max_streams") or 256)

    def engine_config(self):
        """The engine's ``EngineConfig`` (call it where the engine runs: ``auto`` devices
        resolve on that machine)."""
        return serving_engine_config(
            {**self.engine, "max_streams": self.max_streams}, dtype_chosen=self.dtype_chosen
        )

    def resolve_token(self) -> str | None:
        """The token clients must send: the option, else ``$token_env``; None: no auth."""
        return self.token or os.environ.get(self.token_env) or None


def parse_options(args: Mapping[str, Any]) -> tuple[ReplicaOptions, dict[str, Any]]:
    """Split application args into replica options and Serve deployment options.

    Returns:
        ``(replica options, kwargs for Deployment.options())``.

    Raises:
        ValueError: An unknown option or an invalid engine setting.
    """
    unknown = sorted(set(args) - set(ALL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown ASR app option(s) {unknown}; known: {sorted(ALL_OPTIONS)}")
    engine = {key: args[key] for key in ENGINE_OPTIONS if args.get(key) is not None}
    replica = ReplicaOptions(
        engine=engine,
        dtype_chosen="dtype" in engine,
        **{key: args[key] for key in SERVER_OPTIONS if args.get(key) is not None},
        **{key: args[key] for key in PROCESS_OPTIONS if args.get(key) is not None},
    )
    replica.engine_config()  # validates chunk, device, dtype... now, not in every replica
    return replica, _deployment_options(args, replica)


def _deployment_options(args: Mapping[str, Any], replica: ReplicaOptions) -> dict[str, Any]:
    device = str(replica.engine.get("device", "auto"))
    num_gpus = args.get("num_gpus")
    if num_gpus is None:
        num_gpus = _default_num_gpus(device)
    actor: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": args.get("num_cpus", 1)}
    if args.get("resources"):
        actor["resources"] = dict(args["resources"])
    out: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": args.get(
            "max_ongoing_requests", replica.max_streams + PROBE_HEADROOM
        ),
    }
    if args.get("autoscaling_config") is not None:
        out["autoscaling_config"] = dict(args["autoscaling_config"])
    elif args.get("num_replicas") is not None:
        out["num_replicas"] = args["num_replicas"]
    for key in ("graceful_shutdown_timeout_s", "name"):
        if args.get(key) is not None:
            out[key] = args[key]
    return out


def _default_num_gpus(device: str) -> float:
    """One GPU per replica for a CUDA device; ``auto`` asks the cluster, not this machine
    (the head that builds the app often has no GPU)."""
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    import ray

    if not ray.is_initialized():
        return 0
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
