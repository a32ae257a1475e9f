"""scripts/bench_asr.py runs end to end on the tiny model (a few seconds, tiny settings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_asr.py"


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_asr_smoke(tmp_path, monkeypatch, capsys):
    bench = load_script("bench_asr")
    argv = ["bench_asr.py", "--arch", "tiny", "--device", "cpu", "--batches", "1,4"]
    argv += ["--streams", "2", "--seconds", "1", "--repeats", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert bench.main() == 0
    report = json.loads((tmp_path / "bench_asr.json").read_text())
    for name in ("engine", "engine-nemo", "shipped-batched", "buffered", "shipped"):
        result = report["results"][name]
        assert result["step_ms"]["1"] > 0
        assert result["chunk_latency_ms"]["p50"] is not None
        assert result["time_to_final_ms"]["p50"] > 0
        assert result["flops_per_step"]["4"] > result["flops_per_step"]["1"] > 0
        assert result["est_bytes_per_step"]["4"] > result["memory"]["weight_bytes"] > 0
    assert report["results"]["engine"]["memory"]["encoder"] == "fast"
    assert report["results"]["engine-nemo"]["memory"]["encoder"] == "nemo"
    # The K/V-cached step does fewer FLOPs than NeMo's on the same model.
    assert report["engine_vs_engine-nemo"]["flop_ratio"]["4"] > 1
    assert (tmp_path / "bench_asr.png").exists()
    assert "capacity" in capsys.readouterr().out


def test_bench_engine_cpu_smoke(tmp_path, monkeypatch, capsys):
    bench = load_script("bench_engine_cpu")
    argv = ["bench_engine_cpu.py", "--batches", "4,16", "--ticks", "2", "--fake-step-ms", "5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    assert bench.main() == 0
    report = json.loads((tmp_path / "bench_engine_cpu.json").read_text())
    rows = {(r["batch"], r["plan_ahead"]): r for r in report["results"]}
    assert set(rows) == {(4, False), (4, True), (16, False), (16, True)}
    # The fake device step is inside the tick; what is left is the engine's own CPU work.
    assert all(r["tick_ms"] >= 5 and r["visible_cpu_us_per_row"] > 0 for r in rows.values())
    assert "visible CPU us/row" in capsys.readouterr().out


def test_bench_finals_smoke(tmp_path, monkeypatch, capsys):
    """Finals inside the live calls save the calls of their own, tiny model, short form."""
    bench = load_script("bench_finals")
    argv = ["bench_finals.py", "--arch", "tiny", "--batch", "4", "--finals", "2"]
    monkeypatch.setattr(
        sys, "argv", [*argv, "--seconds", "4", "--repeats", "2", "--out", str(tmp_path)]
    )
    assert bench.main() == 0
    report = json.loads((tmp_path / "bench_finals.json").read_text())
    own, inside = sorted(report["results"], key=lambda r: r["final_rows"])
    assert own["final_rows"] == 0 and inside["final_rows"] == 2
    # Live step + two sub-steps of their own, against the live call + one more wave.
    assert own["encoder_calls"] == 3 and inside["encoder_calls"] == 2
    assert (tmp_path / "bench_finals.png").stat().st_size > 0
    assert "time to finals ms" in capsys.readouterr().out


def test_gpu_exactness_dry_run_on_cpu(tmp_path, monkeypatch, capsys):
    """The GPU check's output comparison, on CPU (no graphs here): the fast step matches NeMo's."""
    check = load_script("gpu_exactness")
    argv = ["gpu_exactness.py", "--arch", "tiny", "--device", "cpu", "--streams", "5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--seconds", "2", "--out", str(tmp_path)])
    assert check.main() == 0
    report = json.loads((tmp_path / "gpu_exactness.json").read_text())["variants"]
    assert set(report) == {"nemo", "fast", "fast-bf16", "fast-bf16-own-finals"}
    assert report["fast"]["vs_nemo_fp32"] < 1e-5 and report["fast"]["finals_equal_twin"] == 5
    assert 0 < report["fast-bf16"]["vs_twin"] < 0.1
    # Finals inside the live calls and in calls of their own: the same live rows, same finals.
    own = report["fast-bf16-own-finals"]
    assert own["vs_twin"] == 0 and own["finals_equal_twin"] == 5
    assert "finals equal to twin" in capsys.readouterr().out
