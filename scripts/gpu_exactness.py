#!/usr/bin/env python
"""Output checks of the engine on a device: fast step vs NeMo's step, graphs vs eager.

The same audio goes through engines that differ in one setting each, on the same model object:
``nemo`` (NeMo's ``cache_aware_stream_step``, fp32: the reference), ``fast`` (our K/V-cached step,
fp32), ``fast-bf16`` and, on CUDA, ``fast-bf16-graphs`` (the live step in CUDA graphs on the
slot pool). Per stream it records every live encoder output (``_encoder_tap``) and the final's
text, then reports the largest difference of each engine's encoder output from the reference
and from its eager twin, and how many finals read the same. Streams have different lengths and
join at different times, so rows at different positions share batches and buckets are padded.

Example (the GPU check runs it; on CPU it is a dry run without graphs):
  python scripts/gpu_exactness.py --arch nemotron-0.6b --device cuda --streams 48
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.asr.engine import ASREngine, EngineConfig  # noqa: E402
from services.asr.engine.arch import babble, build_model  # noqa: E402
from services.asr.engine.loader import configure_for_streaming  # noqa: E402


def run_engine(model, config: EngineConfig, audio: list[np.ndarray]) -> dict:
    """Live encoder outputs ``[D, T]`` and final text per stream of one engine."""
    engine = ASREngine(config, model=model)
    outputs: dict[str, list[torch.Tensor]] = {}

    def tap(stream_id: str, kind: str, encoded: torch.Tensor) -> None:
        if kind == "live":
            outputs.setdefault(stream_id, []).append(encoded.float().cpu())

    engine._encoder_tap = tap
    try:
        streams = []
        for i, samples in enumerate(audio):
            stream = engine.open_stream()
            streams.append(stream)
            # Staggered joins: earlier streams are some chunks ahead when later ones start.
            for lo in range(0, len(samples), 2560):
                stream.push_audio(samples[lo : lo + 2560])
                if i % 3 == 0:
                    time.sleep(0.001)
        finals = [s.finalize_sync(300) for s in streams]
        live = [torch.cat(outputs.get(s.id, [torch.zeros(0, 0)]), dim=-1) for s in streams]
        return {"live": live, "text": [f.text for f in finals]}
    finally:
        engine.shutdown()


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        n = min(x.shape[-1], y.shape[-1])  # a stream's last live step may land after its final
        if n:
            worst = max(worst, (x[..., :n] - y[..., :n]).abs().max().item())
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk-ms", type=int, default=160)
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default="bench_results/gpu_exactness")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = build_model(args.arch, seed=0, blank_bias=8.0).to(device)
    base = EngineConfig(
        model=f"random:{args.arch}",
        device=args.device,
        chunk_ms=args.chunk_ms,
        max_streams=args.streams,
        max_batch=args.streams,
    )
    configure_for_streaming(model, base)
    rng = np.random.default_rng(0)
    audio = [
        babble(round(float(rng.uniform(0.5, 1.0)) * args.seconds, 1), i)
        for i in range(args.streams)
    ]
    variants = {
        "nemo": dict(encoder="nemo", dtype="fp32"),
        "fast": dict(encoder="fast", dtype="fp32"),
        "fast-bf16": dict(encoder="fast", dtype="bf16"),
        # Every final in calls of its own (the reference path of finals inside the live calls).
        "fast-bf16-own-finals": dict(encoder="fast", dtype="bf16", final_rows=0),
    }
    if device.type == "cuda":
        variants["fast-bf16-graphs"] = dict(encoder="fast", dtype="bf16", cuda_graphs=True)
        variants["fast-bf16-graphs-plan-ahead"] = dict(
            encoder="fast", dtype="bf16", cuda_graphs=True, plan_ahead=True
        )
    results = {}
    for name, overrides in variants.items():
        started = time.perf_counter()
        config = EngineConfig(**{**base.__dict__, **overrides})
        results[name] = run_engine(model, config, audio)
        print(f"{name}: {len(audio)} streams in {time.perf_counter() - started:.1f} s", flush=True)
    ref = results["nemo"]
    twin = {
        "fast": "nemo",
        "fast-bf16": "fast",
        "fast-bf16-own-finals": "fast-bf16",
        "fast-bf16-graphs": "fast-bf16",
        "fast-bf16-graphs-plan-ahead": "fast-bf16-graphs",
    }
    report = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "variants": {},
    }
    print(f"\n{'engine':<20}{'max |x - nemo fp32|':<22}{'max |x - twin|':<18}finals equal to twin")
    for name, res in results.items():
        row = {"vs_nemo_fp32": max_diff(res["live"], ref["live"])}
        if name in twin:
            other = results[twin[name]]
            row["twin"] = twin[name]
            row["vs_twin"] = max_diff(res["live"], other["live"])
            row["finals_equal_twin"] = sum(
                a == b for a, b in zip(res["text"], other["text"], strict=True)
            )
        report["variants"][name] = row
        print(
            f"{name:<20}{row['vs_nemo_fp32']:<22.3g}{row.get('vs_twin', 0.0):<18.3g}"
            f"{row.get('finals_equal_twin', '-')}/{len(audio)}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_exactness.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'gpu_exactness.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
