#!/usr/bin/env python3
"""Whisper's encoder window: accuracy and time per utterance, 15 s against the full 30 s.

Transcribes the cached real recordings (``scripts/fetch_speech.py``) with the ``whisper``
backend's own model and decoding (``stt.model``, greedy, no timestamps) at each window in
``--windows`` (0 = Whisper's 30 s, the baseline, measured in the same run), one utterance at a
time as the agent does, and reports mean WER and time per utterance. Writes ``results.json``,
``window.png`` and ``table.md`` into ``--out``.

    .venv/bin/python scripts/bench_whisper_window.py --count 200
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", default="15,0", help="windows in seconds (0 = 30 s)")
    parser.add_argument("--count", type=int, default=200, help="utterances (200)")
    parser.add_argument("--min-secs", type=float, default=0.5)
    parser.add_argument("--max-secs", type=float, default=14.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default bench_results/whisper-window-<time>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from loguru import logger

    logger.remove()
    from pipelines.backends import stt_whisper
    from tests.e2e.speech import load_utterances, word_error_rate
    from tests.e2e.voice_client import load_audio
    from tests.support.whisper import whisper_settings

    found = [u for u in load_utterances() if args.min_secs <= u.duration_s <= args.max_secs]
    random.Random(args.seed).shuffle(found)
    chosen = found[: args.count]
    if not chosen:
        raise SystemExit("no cached speech: run scripts/fetch_speech.py")
    audio = [load_audio(u.path).astype(np.float32) / 32768.0 for u in chosen]
    windows = [float(w) for w in args.windows.split(",")]
    rows = {}
    for window in windows:
        name = f"{window:g} s" if window else "30 s (full)"
        model = stt_whisper.load_model(whisper_settings(whisper_window_secs=window))
        greedy = stt_whisper._GreedyWhisper(model, 1)
        greedy.transcribe(audio[0], language="en")  # warm-up
        redone = getattr(model, "redone", 0)
        errors, secs = [], []
        for i, (utterance, samples) in enumerate(zip(chosen, audio, strict=True)):
            start = time.perf_counter()
            segments, _ = greedy.transcribe(samples, language="en")
            text = stt_whisper.segments_text(list(segments), 0.4)
            secs.append(time.perf_counter() - start)
            errors.append(word_error_rate(utterance.text, text))
            if (i + 1) % 50 == 0:
                print(f"[{name}] {i + 1}/{len(chosen)}", flush=True)
        rows[name] = {
            "window_secs": window or 30.0,
            "mean_wer": float(np.mean(errors)),
            "p50_ms": float(np.percentile(secs, 50) * 1000),
            "p90_ms": float(np.percentile(secs, 90) * 1000),
            "mean_ms": float(np.mean(secs) * 1000),
            "redone_over_30s": getattr(model, "redone", 0) - redone,
            "wer": errors,
            "secs": secs,
        }
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_v2v import hardware

    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "utterances": len(chosen),
        "model": stt_whisper.model_name(whisper_settings()),
        "hardware": hardware(),
        "threads": stt_whisper.cpu_threads(),
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or REPO_ROOT / f"bench_results/whisper-window-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "windows": rows}, indent=1))
    lines = [
        f"Whisper window, {len(chosen)} cached recordings, {meta['hardware'].get('cpu')}, "
        f"{meta['threads']} threads",
        "",
        "| window | mean WER | p50 ms | p90 ms | mean ms | redone over 30 s |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['mean_wer']:.1%} | {row['p50_ms']:.0f} | {row['p90_ms']:.0f} | "
            f"{row['mean_ms']:.0f} | {row['redone_over_30s']} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(rows)
    left.bar(names, [rows[n]["mean_wer"] * 100 for n in names], color="#4a7")
    left.set_ylabel("mean WER (%)")
    right.boxplot([np.array(rows[n]["secs"]) * 1000 for n in names], tick_labels=names)
    right.set_ylabel("ms per utterance")
    fig.suptitle(f"Whisper encoder window ({len(chosen)} recordings)")
    fig.tight_layout()
    fig.savefig(out / "window.png", dpi=100)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
