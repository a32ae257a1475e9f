"""``scripts/loadtest_ray.py``'s comparison: ABBA rounds and the median share per target.

The Ray runs themselves are a benchmark (minutes each); these check the arithmetic that turns
its searches into the reported share, on search results written out by hand.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def loadtest_ray():
    spec = importlib.util.spec_from_file_location("loadtest_ray", ROOT / "scripts/loadtest_ray.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def search(target: str, replicas: int, round_: int, best: int) -> dict:
    return {
        "target": target,
        "replicas": replicas,
        "round": round_,
        "max_streams_no_drift": best,
        "first_failing": best + 32,
        "p99_lag_at_max_s": 0.1 * round_,
        "trials": [],
    }


def test_rounds_alternate_the_order_of_the_targets():
    lt = loadtest_ray()
    plain, ray1 = lt.Target("asr-server", 0), lt.Target("ray-1", 1)
    order = lt.round_order([plain, ray1], 4)
    assert [(r, t.name) for r, t in order] == [
        (1, "asr-server"),
        (1, "ray-1"),
        (2, "ray-1"),
        (2, "asr-server"),
        (3, "asr-server"),
        (3, "ray-1"),
        (4, "ray-1"),
        (4, "asr-server"),
    ]
    assert [(r, t.name) for r, t in lt.round_order([plain, ray1], 1)] == [
        (1, "asr-server"),
        (1, "ray-1"),
    ]


def test_the_share_is_the_median_over_rounds_and_each_round_is_listed():
    lt = loadtest_ray()
    results = [
        search("asr-server", 0, 1, 200),
        search("ray-1", 1, 1, 100),  # one bad round must not decide the verdict
        search("ray-1", 1, 2, 190),
        search("asr-server", 0, 2, 200),
        search("asr-server", 0, 3, 160),
        search("ray-1", 1, 3, 180),
    ]
    rows = {row["target"]: row for row in lt.summary(results)}
    assert rows["asr-server"]["max_streams_no_drift"] == 200
    assert rows["asr-server"]["share_of_asr_server"] == 1.0
    ray1 = rows["ray-1"]
    assert ray1["per_round"] == [100, 190, 180]
    assert ray1["max_streams_no_drift"] == 180
    assert ray1["share_of_asr_server"] == 0.9
    # Each round against asr-server in the same round.
    assert ray1["share_per_round"] == [0.5, 0.95, 1.125]
    # The lag reported is the one at the round with the largest N.
    assert ray1["p99_lag_at_max_s"] == 0.2


def test_one_round_reports_as_before():
    lt = loadtest_ray()
    rows = lt.summary([search("asr-server", 0, 1, 176), search("ray-1", 1, 1, 112)])
    assert [(r["target"], r["max_streams_no_drift"], r["share_of_asr_server"]) for r in rows] == [
        ("asr-server", 176, 1.0),
        ("ray-1", 112, 0.636),
    ]


def cost(target: str, replicas: int, round_: int, ms: float, processes: dict) -> dict:
    cores = ms * 100 / 1000  # at 100 streams
    return {
        "target": target,
        "replicas": replicas,
        "round": round_,
        "streams": 100,
        "ok": round_ != 2 or target != "ray-2",
        "cpu": {
            "tree_cores": cores,
            "host_busy_cores": cores + 0.2,
            "ms_per_stream_s": ms,
            "cores_by_process": processes,
        },
    }


def test_the_cpu_cost_is_the_median_over_rounds_against_asr_servers():
    lt = loadtest_ray()
    results = [
        cost("asr-server", 0, 1, 6.0, {"python (multiprocessing child)": 0.5, "python": 0.1}),
        cost("ray-2", 2, 1, 9.0, {"python (multiprocessing child)": 0.7, "haproxy": 0.1}),
        cost("ray-2", 2, 2, 10.0, {"python (multiprocessing child)": 0.8}),
        cost("asr-server", 0, 2, 7.0, {"python (multiprocessing child)": 0.6, "python": 0.1}),
        cost("asr-server", 0, 3, 6.5, {"python (multiprocessing child)": 0.55, "python": 0.1}),
        cost("ray-2", 2, 3, 8.0, {"python (multiprocessing child)": 0.6, "haproxy": 0.2}),
    ]
    rows = {row["target"]: row for row in lt.cpu_summary(results)}
    assert rows["asr-server"]["ms_per_stream_s"] == 6.5
    assert rows["asr-server"]["cost_vs_asr_server"] == 1.0
    ray2 = rows["ray-2"]
    assert ray2["per_round"] == [9.0, 10.0, 8.0]
    assert ray2["ms_per_stream_s"] == 9.0
    assert ray2["cost_vs_asr_server"] == round(9.0 / 6.5, 3)
    assert ray2["tree_cores"] == 0.9 and ray2["host_busy_cores"] == 1.1
    # A process missing from a round used nothing in it: HAProxy's median is over 0.1, 0, 0.2.
    assert ray2["cores_by_process"] == {"python (multiprocessing child)": 0.7, "haproxy": 0.1}
    assert ray2["all_ok"] is False and rows["asr-server"]["all_ok"] is True


def test_a_process_trees_cpu_is_read_from_proc_by_process():
    """A real parent and its busy multiprocessing-style child are read; this process is not."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import proc_cpu

    busy = textwrap.dedent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass\\n"
            "time.sleep(30)", "multiprocessing.spawn"])
        time.sleep(30)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", busy])
    try:
        time_window = proc_cpu.CpuWindow(parent.pid)
        time_window.start()
        deadline = time.monotonic() + 20
        tree = proc_cpu.process_tree(parent.pid)
        while len(tree) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            tree = proc_cpu.process_tree(parent.pid)
        assert os.getpid() not in tree
        time.sleep(1.5)  # the child's 0.6 s of CPU, then it sleeps
        result = time_window.stop()
    finally:
        for pid in proc_cpu.process_tree(parent.pid)[1:]:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert result["wall_s"] >= 1.5
    child_s = sum(
        cores * result["wall_s"]
        for label, cores in result["cores_by_process"].items()
        if label.endswith("(multiprocessing child)")
    )
    assert child_s >= 0.3, result
    assert result["tree_cores"] * result["wall_s"] >= 0.3


async def test_a_costed_trial_reads_the_real_servers_process_tree(tmp_path):
    """``--cpu-at``'s trial against a real tiny-model asr-server: its engine process is costed."""
    import numpy as np

    from tests.asr_server.tiny import speechlike_pcm

    lt = loadtest_ray()
    clips = [np.frombuffer(speechlike_pcm(s, seed=i), "<i2") for i, s in enumerate((2.0, 2.5))]
    server = lt.lt.ServerProcess(
        str(lt.lt.tiny_model_path()), torch_threads=1, log_path=tmp_path / "server.log"
    )
    server.start()
    try:
        cfg = lt.lt.TrialConfig(streams=4, duration=7.0, warmup_s=1.0, send_ms=160)
        cost = await lt.cpu_trial(server, cfg, clips, log=print)
    finally:
        server.stop()
    assert cost["streams"] == 4 and cost["trial"]["clients"]["completed"] == 4
    cpu = cost["cpu"]
    assert 3.5 <= cpu["wall_s"] <= 5.0  # from warm-up + 1 s to the trial's end - 1 s
    engine = sum(
        cores
        for label, cores in cpu["cores_by_process"].items()
        if label.endswith("(multiprocessing child)")
    )
    assert engine > 0.0, cpu  # the engine process did the model's work
    assert cpu["tree_cores"] >= engine
    assert cpu["ms_per_stream_s"] == round(1000 * cpu["tree_cores"] / 4, 3)
