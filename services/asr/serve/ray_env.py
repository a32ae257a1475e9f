"""The environment Ray's processes start with: loopback on one host, a lean control plane.

Ray reads these when it is imported (Serve's constants) or when its daemons start (``RAY_<key>``
system config), so they are set before ``import ray``; :func:`apply` keeps any value the user
set. No ``ray`` import here.

Why lean: on a small host the control plane shares the cores with the engine and the audio
front end. Idle on 2 vCPUs (tiny model, one replica, 20 s, ``/proc`` CPU summed over Ray's
processes) it took ~16% of a core with Ray's defaults and ~10% with ``LEAN_ENV``; the
controller's 100 ms loop alone was ~5%. Nothing here changes routing or failover: the
controller reacts to a dead replica within one loop (0.5 s, well inside failover's 2.5 s), and
autoscaling decisions are on a 10 s upscale delay anyway. The replica's own code also runs on
Serve's event loop (no thread hop per WebSocket message): with it, ``loadtest_ray.py --rounds 2``
measured ray-1 at 114% of the plain server's N (median of two ABBA rounds; README).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Keeps a one-host Ray on 127.0.0.1 (the node address is the loopback one, not the host's),
# sends no usage report, and never starts a Ray behind the driver's back.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # No Ray call starts a Ray of its own. After a driver disconnects on its way out, Serve's
    # handle thread still makes one more call; with auto-connect on, that ran ray.init() on a
    # fresh local Ray mid-shutdown (new GCS, raylet, dashboard), whose late children (the
    # dashboard's forkserver, a resource tracker) outlived the program.
    "RAY_ENABLE_AUTO_CONNECT": "0",
}

LEAN_ENV = {
    # Serve's controller loop (default 0.1 s): health, autoscaling and routing updates.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25",
    # How often replicas export Serve's cached request metrics (default 100 ms).
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    # Ray core's own metrics and event-loop statistics (for the dashboard and Prometheus, which
    # a local cluster does not run) and the task-event stream behind `ray list tasks`.
    "RAY_enable_metrics_collection": "0",
    "RAY_event_stats": "0",
    "RAY_enable_timeline": "0",
    "RAY_task_events_report_interval_ms": "10000",
    # The replica's code on Serve's own event loop instead of a second loop on its own thread
    # (part of Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED preset): each WebSocket message then costs
    # no hop between threads. Safe here because the handler never blocks its loop (the engine
    # runs in its own process or on its own scheduler thread).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}


def apply(env: MutableMapping[str, str] | None = None, *, lean: bool = True) -> None:
    """Set ``LOCAL_ENV`` (and ``LEAN_ENV``) where ``env`` (``os.environ``) has no value yet."""
    env = os.environ if env is None else env
    for key, value in (LOCAL_ENV | LEAN_ENV if lean else LOCAL_ENV).items():
        env.setdefault(key, value)
