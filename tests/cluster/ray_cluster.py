"""A real Ray cluster of several nodes on one host, for the Serve tests (loopback only).

``ray.cluster_utils.Cluster`` (what Ray's own tests use) starts a head and worker "nodes" as
separate raylets on 127.0.0.1. The ASR app runs with HAProxy as Serve's ingress on the head only
(``HeadOnly``), so removing a worker node kills its replica and nothing else: the clients of
the other replica keep their connections.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

# Before ray is imported anywhere: its constants read these at import time.
from services.asr.serve import ray_env  # no ray import

# Loopback (node address = 127.0.0.1, not the host's) and the lean control plane that
# `voice-agent asr-cluster` runs with, so failover and autoscaling are tested under it.
ray_env.apply()
os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"

import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from services.asr.serve.app import build_app  # noqa: E402

STORE_BYTES = 100 * 1024 * 1024
# The realtime tests' token, so those tests run against the cluster unchanged.
TOKEN = "realtime-test-token"
# The resource one ASR replica takes, as a GPU would be: one per worker node.
SLOT = "asr_slot"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_prefix(node: Any) -> str:
    """The node id prefix a replica reports (``replica@<prefix>``)."""
    return node.node_id[:12]


@dataclass
class LocalCluster:
    """A head (controller, HAProxy) and worker nodes with one ASR slot each."""

    port: int = field(default_factory=free_port)
    cluster: Cluster | None = None
    workers: list[Any] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/v1/stream", *, token: bool = True) -> str:
        return f"ws://{self.base}{path}" + (f"?token={TOKEN}" if token else "")

    def start(self, *, workers: int) -> None:
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "node_ip_address": "127.0.0.1",
                "include_dashboard": False,
                "object_store_memory": STORE_BYTES,
                "num_cpus": 2,
            },
        )
        for _ in range(workers):
            self.add_worker()
        ray.init(address=self.cluster.address, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port, "location": "HeadOnly"})

    def add_worker(self) -> Any:
        assert self.cluster is not None
        node = self.cluster.add_node(
            node_ip_address="127.0.0.1",
            object_store_memory=STORE_BYTES,
            num_cpus=1,
            resources={SLOT: 1},
        )
        self.workers.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        """The node is gone at once (processes killed, no drain), as a host that dies."""
        assert self.cluster is not None
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def deploy(self, name: str, route_prefix: str, **options: Any) -> None:
        """``serve.run`` of the ASR app; returns once its replicas are serving."""
        serve.run(build_app(options), name=name, route_prefix=route_prefix, blocking=False)

    def shutdown(self) -> None:
        # Not serve.shutdown(): with HAProxy it waits ~30 s; the cluster goes down whole.
        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()


def tiny_replica_options(model: str, **overrides: Any) -> dict[str, Any]:
    """The tiny CPU engine in the replica's process (one thread), as the asr_server tests."""
    options: dict[str, Any] = {
        "model": model,
        "device": "cpu",
        "dtype": "fp32",
        "chunk_ms": 160,
        "in_process": True,
        "torch_threads": 1,
        "token": TOKEN,
        "num_cpus": 0,
    }
    options.update(overrides)
    return options


def wait_until(predicate, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
