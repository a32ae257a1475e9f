"""``scripts/loadtest_ray.py``'s comparison: ABBA rounds and the median share per target.

The Ray runs themselves are a benchmark (minutes each); these check the arithmetic that turns
its searches into the reported share, on search results written out by hand.
"""

from __future__ import annotations

import importlib.util
import sys
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
