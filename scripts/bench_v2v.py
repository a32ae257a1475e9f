#!/usr/bin/env python3
"""Voice-to-voice benchmark: N spoken turns over real WebRTC, timed at the client.

A WebRTC client (aiortc) speaks real recorded utterances (``scripts/fetch_speech.py``) to the
agent, one turn at a time, and times each turn from the end of the user's speech to the first
audible frame of the bot's reply, as received. The agent's per-turn breakdown (RTVI
``turn-latency``: VAD wait, transcription, turn detection, LLM first token, TTS first audio, ...)
splits that time into stages; whatever the client measured beyond the agent's own total is
``transport`` (both WebRTC legs: Opus, jitter buffers, the network).

``--sessions N`` runs N such clients at once against the same agent, each speaking its own
``--turns`` (their utterances differ, their turns overlap as they drift apart): what many users of
one process hear. Statistics are per session and over all of them.

Targets a running agent (``--url``, any profile, any machine) or starts one (``--profile``, with
``--set`` overrides). Writes ``results.json``, ``v2v.png`` and ``table.md`` into ``--out`` and
prints the table.

Examples::

    python scripts/bench_v2v.py --profile cpu --turns 20
    python scripts/bench_v2v.py --profile cpu --sessions 4 --turns 8   # 4 users at once
    python scripts/bench_v2v.py --url http://gpu-box:7860 --turns 50   # agent runs elsewhere
    python scripts/bench_v2v.py --profile nvidia --set llm.base_url=http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.agent_process import AgentProcess, start_agent, webrtc_host_address  # noqa: E402
from tests.e2e.speech import SPEECH_DIR, Utterance, load_utterances  # noqa: E402
from tests.e2e.voice_client import WALL_OFFSET, TurnResult, VoiceClient  # noqa: E402

# Stages of one turn, in timeline order: (name, label, agent breakdown keys).
STAGES: list[tuple[str, str, tuple[str, ...]]] = [
    ("vad_wait", "VAD wait (stop_secs + the VAD's lag)", ("endpointing_wait",)),
    ("stt", "final transcript", ("transcription",)),
    ("turn", "turn detection", ("turn_detection",)),
    ("llm", "LLM first token", ("llm_inference",)),
    ("llm_text", "LLM first sentence", ("awaiting_speakable_text", "sentence_aggregation")),
    ("tts", "TTS first audio", ("speech_synthesis",)),
    ("pipeline", "pipeline (frames, output)", ()),  # every other key the agent reports
    ("transport", "transport (WebRTC both ways)", ()),  # client total - agent total
]
MODEL_STAGES = ("vad_wait", "stt", "llm", "tts")
PERCENTILES = (50, 90, 99)
# Replies are capped when the bench starts the agent, so turns stay short; pass --set to change.
DEFAULT_OVERRIDES = {"llm.max_tokens": "60"}


def stage_times(turn: TurnResult, same_host: bool = False) -> dict[str, float] | None:
    """Seconds per stage for one turn; None without a reply or without the agent's breakdown.

    ``same_host``: the agent runs on this machine (one wall clock), so ``transport`` can be
    split into its way in and its way out.
    """
    v2v = turn.voice_to_voice_secs
    if v2v is None or v2v <= 0 or turn.overlapped or not turn.server_latency:
        return None
    parts: dict[str, float] = dict(turn.server_latency.get("parts") or {})
    server_total = float(turn.server_latency.get("total_secs") or 0.0)
    # A breakdown measured from anything but the user's end of speech (a pause split the
    # utterance and a late transcript opened a turn of its own), or longer than what the client
    # measured, is not this turn's: leave the turn out of the stage statistics.
    if "endpointing_wait" not in parts or server_total > v2v + 0.25:
        return None
    times: dict[str, float] = {}
    for name, _label, keys in STAGES:
        times[name] = sum(parts.pop(key, 0.0) for key in keys)
    times["pipeline"] = sum(parts.values())
    # The agent's turn starts at the VAD's decision minus stop_secs; Silero's confidence
    # outlasts the last word, so that lands after the last voiced audio the agent received.
    # That lag is the VAD's waiting too: it moves from transport to VAD wait.
    stopped = turn.server_latency.get("user_stopped_at")
    last_voice = turn.server_latency.get("user_last_voice_at")
    times["vad_tail"] = 0.0
    if isinstance(stopped, int | float) and isinstance(last_voice, int | float):
        times["vad_tail"] = stopped - last_voice
        times["vad_wait"] += times["vad_tail"]
    times["transport"] = v2v - server_total - times["vad_tail"]
    # Same host: one wall clock, so the transport splits at the agent's receipt of the last
    # voiced audio (or, from an agent that does not report it, at its start of the turn) into
    # the way in (uplink) and the way out (output queue, Opus, network, decoding).
    if isinstance(stopped, int | float) and same_host:
        arrived = stopped - times["vad_tail"]
        times["transport_in"] = arrived - (turn.speech_end_at + WALL_OFFSET)
        times["transport_out"] = times["transport"] - times["transport_in"]
    times["server_total"] = server_total
    times["total"] = v2v
    # Pipeline overhead: all but the model stages and the VAD wait, as the user hears it and
    # inside the agent (without the WebRTC legs).
    model_time = sum(times[name] for name in MODEL_STAGES)
    times["overhead"] = v2v - model_time
    # The same, counting the LLM until its first speakable sentence (the TTS cannot start
    # before it) as model time rather than overhead.
    times["overhead_llm_to_sentence"] = times["overhead"] - times["llm_text"]
    times["agent_overhead"] = server_total + times["vad_tail"] - model_time
    return times


def _same_host(url: str) -> bool:
    """Whether ``url`` points at this machine (loopback or one of its own addresses)."""
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host in ("localhost", "127.0.0.1", "::1"):
        return True
    try:
        own = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        own = set()
    return host in own


def summarize(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    summary = {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}
    summary |= {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}
    return summary


def hardware() -> dict:
    """What ran the client (and, for a local agent, the agent)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
        mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        info["memory_gb"] = round(int(mem.group(1)) / 1024**2, 1) if mem else None
    except OSError:
        info["cpu"] = platform.processor()
    if shutil.which("nvidia-smi"):
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["gpus"] = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return info


def agent_config(profile: str | None, overrides: dict[str, str]) -> dict | None:
    """``voice-agent config --json`` for the agent this script starts (values, no secrets)."""
    from tests.e2e.agent_process import agent_command

    command = [*agent_command(), "config", "--json"]
    if profile:
        command += ["--profile", profile]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        return None
    return {key: entry["value"] for key, entry in json.loads(result.stdout).items()}


def pick_utterances(args: argparse.Namespace) -> list[Utterance]:
    found = load_utterances(args.speech_dir)
    found = [u for u in found if args.min_secs <= u.duration_s <= args.max_secs]
    if args.utterances:
        pattern = re.compile(args.utterances)
        found = [u for u in found if pattern.search(u.id) or pattern.search(u.text)]
    if args.questions:
        found = [u for u in found if u.text.rstrip().endswith("?")] or found
    if not found:
        raise SystemExit("no utterances match; run scripts/fetch_speech.py or widen the filters")
    random.Random(args.seed).shuffle(found)
    return found


async def run_sessions(
    url: str, utterances: list[Utterance], args: argparse.Namespace
) -> list[dict]:
    """Run ``args.sessions`` clients at once, each speaking its own turns; all their records."""
    per_session = await asyncio.gather(
        *(run_turns(url, utterances, args, session=s) for s in range(args.sessions))
    )
    return sorted((r for records in per_session for r in records), key=lambda r: r["finished"])


async def run_turns(
    url: str, utterances: list[Utterance], args: argparse.Namespace, *, session: int = 0
) -> list[dict]:
    """Speak ``args.warmup + args.turns`` utterances, reconnecting every few turns.

    ``session`` numbers the client among those running at once; each starts at its own place
    in the utterance list, so simultaneous sessions say different things.
    """
    records: list[dict] = []
    total = args.warmup + args.turns
    same_host = _same_host(url)
    client: VoiceClient | None = None
    turns_in_session = 0
    offset = session * total
    tag_session = f"s{session} " if args.sessions > 1 else ""
    try:
        for index in range(total):
            if client is None or turns_in_session >= args.turns_per_session:
                if client is not None:
                    await client.close()
                client = VoiceClient(url)
                started = time.monotonic()
                await client.connect()
                connect_secs = time.monotonic() - started
                turns_in_session = 0
                await asyncio.sleep(args.pause)
            utterance = utterances[(offset + index) % len(utterances)]
            turn = await client.say(
                utterance.path,
                response_timeout=args.response_timeout,
                max_reply_secs=args.max_reply_secs,
            )
            turns_in_session += 1
            times = stage_times(turn, same_host=same_host)
            record = {
                "session": session,
                "index": index,
                "finished": time.time(),
                "warmup": index < args.warmup,
                "utterance": utterance.id,
                "text": utterance.text,
                "speech_secs": utterance.duration_s,
                # None when the bot was already speaking as the user finished (see overlapped).
                "voice_to_voice_secs": None if turn.overlapped else turn.voice_to_voice_secs,
                "overlapped": turn.overlapped,
                "stages": times,
                "server_latency": turn.server_latency,
                "user_transcript": turn.user_transcript,
                "bot_text": turn.bot_text,
                "bot_audio_secs": round(turn.bot_audio_secs, 2),
                "connect_secs": round(connect_secs, 3) if turns_in_session == 1 else None,
                # Other work on the machine shows up in every stage: keep it next to the numbers.
                "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            }
            records.append(record)
            if turn.overlapped:
                v2v = "overlap"
            elif turn.voice_to_voice_secs is None:
                v2v = "no reply"
            else:
                v2v = f"{turn.voice_to_voice_secs * 1000:.0f} ms"
            tag = "warm-up " if record["warmup"] else ""
            print(
                f"{tag_session}[{index + 1}/{total}] {tag}{v2v:>9}  "
                f"heard {turn.user_transcript!r} -> {turn.bot_text[:60]!r}",
                flush=True,
            )
            await asyncio.sleep(args.pause)
    finally:
        if client is not None:
            await client.close()
    return records


def build_summary(records: list[dict]) -> dict:
    measured = [r for r in records if not r["warmup"]]
    timed = [r for r in measured if r["stages"]]
    loads = [r["load_avg_1min"] for r in measured if r.get("load_avg_1min") is not None]
    summary: dict = {
        "turns": len(measured),
        "answered": sum(r["voice_to_voice_secs"] is not None for r in measured),
        "overlapped": sum(bool(r.get("overlapped")) for r in measured),
        "with_breakdown": len(timed),
        "load_avg_1min": summarize(loads) if loads else None,
    }
    answered = [r["voice_to_voice_secs"] for r in measured if r["voice_to_voice_secs"]]
    if answered:
        summary["voice_to_voice"] = summarize(answered)
    # Per session (client) when several ran at once: what each user heard, side by side.
    sessions = sorted({r.get("session", 0) for r in measured})
    summary["sessions"] = {}
    for session in sessions:
        own = [r for r in measured if r.get("session", 0) == session]
        heard = [r["voice_to_voice_secs"] for r in own if r["voice_to_voice_secs"]]
        summary["sessions"][str(session)] = {
            "turns": len(own),
            "answered": len(heard),
            "voice_to_voice": summarize(heard) if heard else None,
        }
    if not timed:
        return summary
    keys = [name for name, _, _ in STAGES]
    if all("vad_tail" in r["stages"] for r in timed):
        keys.insert(keys.index("vad_wait") + 1, "vad_tail")
    if all("transport_in" in r["stages"] for r in timed):
        keys[keys.index("transport") + 1 : keys.index("transport") + 1] = [
            "transport_in",
            "transport_out",
        ]
    keys += ["server_total", "agent_overhead", "overhead", "overhead_llm_to_sentence", "total"]
    summary["stages"] = {key: summarize([r["stages"][key] for r in timed]) for key in keys}
    return summary


def format_table(summary: dict, meta: dict) -> str:
    sessions = summary.get("sessions") or {}
    lines = [
        (f"{len(sessions)} sessions at once. " if len(sessions) > 1 else "")
        + f"Voice-to-voice over WebRTC, measured at the client: {summary['turns']} turns, "
        f"{summary['answered']} answered, {summary.get('with_breakdown', 0)} with the agent's "
        "breakdown"
        + (
            f", {summary['overlapped']} left out (the bot spoke before the user finished)."
            if summary.get("overlapped")
            else "."
        ),
        f"Agent: {meta['target']} (profile {meta.get('profile') or 'as configured there'}); "
        f"client host: {meta['hardware'].get('cpu')}, {meta['hardware'].get('logical_cpus')} CPUs"
        + (
            f", 1-min load average {summary['load_avg_1min']['mean']:.1f} during the run."
            if summary.get("load_avg_1min")
            else "."
        ),
        "",
    ]
    if len(sessions) > 1:
        lines += [
            "| session | turns | answered | "
            + " | ".join(f"p{p} ms" for p in PERCENTILES)
            + " | mean ms |",
            "|" + "---|" * (len(PERCENTILES) + 4),
        ]
        rows = [(f"session {name}", entry) for name, entry in sessions.items()]
        rows.append(
            (
                "**all sessions**",
                {
                    "turns": summary["turns"],
                    "answered": summary["answered"],
                    "voice_to_voice": summary.get("voice_to_voice"),
                },
            )
        )
        for label, entry in rows:
            stats = entry["voice_to_voice"]
            cells = (
                " | ".join(f"{stats[f'p{p}'] * 1000:.0f}" for p in PERCENTILES)
                + f" | {stats['mean'] * 1000:.0f}"
                if stats
                else " | ".join("-" for _ in range(len(PERCENTILES) + 1))
            )
            lines.append(f"| {label} | {entry['turns']} | {entry['answered']} | {cells} |")
        lines.append("")
    if "stages" not in summary:
        return "\n".join(lines + ["no turn had a reply with a latency breakdown"])
    header = "| stage | " + " | ".join(f"p{p} ms" for p in PERCENTILES) + " | mean ms |"
    lines += [header, "|" + "---|" * (len(PERCENTILES) + 2)]
    labels = {name: label for name, label, _ in STAGES}
    labels |= {
        "vad_tail": "  of which the VAD's lag past stop_secs (Silero, 32 ms windows)",
        "transport_in": "  of which in: uplink to the agent's input",
        "transport_out": "  of which out: output queue, Opus, network, decoding",
        "server_total": "agent total (its own clock)",
        "agent_overhead": "agent overhead (agent total - VAD wait - STT - LLM - TTS)",
        "overhead": "**overhead** (client total - VAD wait - STT - LLM - TTS)",
        "overhead_llm_to_sentence": "overhead, LLM counted to its first sentence",
        "total": "voice-to-voice (client), same turns",
    }
    for key, stats in summary["stages"].items():
        cells = " | ".join(f"{stats[f'p{p}'] * 1000:.0f}" for p in PERCENTILES)
        lines.append(f"| {labels.get(key, key)} | {cells} | {stats['mean'] * 1000:.0f} |")
    if "voice_to_voice" in summary:
        stats = summary["voice_to_voice"]
        cells = " | ".join(f"{stats[f'p{p}'] * 1000:.0f}" for p in PERCENTILES)
        lines.append(
            f"| **voice-to-voice (client), all {summary['answered']} answered turns** | {cells} "
            f"| {stats['mean'] * 1000:.0f} |"
        )
    lines += [
        "",
        "Stage rows cover the turns with the agent's breakdown; percentiles are taken per stage,",
        "so they do not add up to the total's.",
    ]
    return "\n".join(lines)


def plot(records: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in records if not r["warmup"] and r["stages"]]
    answered = [r for r in records if not r["warmup"] and r["voice_to_voice_secs"]]
    if not answered:
        return
    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(timed))
    bottom = np.zeros(len(timed))
    colors = plt.get_cmap("tab10").colors
    for i, (name, label, _) in enumerate(STAGES):
        values = np.array([max(0.0, r["stages"][name]) * 1000 for r in timed])
        bars.bar(x, values, bottom=bottom, label=label, color=colors[i % len(colors)])
        bottom += values
    totals = np.array([r["stages"]["total"] * 1000 for r in timed])
    bars.plot(x, totals, "k.", label="client voice-to-voice")
    multi = len({r.get("session", 0) for r in timed}) > 1
    ticks = [f"s{r.get('session', 0)}.{r['index']}" if multi else str(r["index"]) for r in timed]
    bars.set_xticks(x, ticks, fontsize=8, rotation=90 if multi else 0)
    bars.set_xlabel("turn (with the agent's breakdown)")
    bars.set_ylabel("ms")
    bars.set_title("Per-turn breakdown")
    ordered = np.sort([r["voice_to_voice_secs"] * 1000 for r in answered])
    sessions = sorted({r.get("session", 0) for r in answered})
    if len(sessions) > 1:
        for session in sessions:
            own = np.sort(
                [
                    r["voice_to_voice_secs"] * 1000
                    for r in answered
                    if r.get("session", 0) == session
                ]
            )
            cdf.plot(
                own,
                np.arange(1, len(own) + 1) / len(own),
                drawstyle="steps-post",
                alpha=0.5,
                label=f"session {session}",
            )
    cdf.plot(
        ordered,
        np.arange(1, len(ordered) + 1) / len(ordered),
        drawstyle="steps-post",
        color="black",
        label="all sessions",
    )
    if len(sessions) > 1:
        cdf.legend(fontsize=7, loc="lower right")
    for i, p in enumerate(PERCENTILES):
        value = summary["voice_to_voice"][f"p{p}"] * 1000
        cdf.axvline(value, linestyle="--", color="gray")
        cdf.text(value, 0.05 + 0.1 * i, f" p{p} {value:.0f}", fontsize=8)
    cdf.set_xlabel("voice-to-voice ms (client)")
    cdf.set_ylabel("fraction of answered turns")
    cdf.set_title(f"Distribution ({len(answered)} turns)")
    fig.suptitle(title)
    fig.legend(*bars.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running agent, e.g. http://127.0.0.1:7860")
    target.add_argument(
        "--profile", default=None, help="start an agent with this profile (default: cpu)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the started agent (default llm.max_tokens=60)",
    )
    parser.add_argument(
        "--sessions", type=int, default=1, help="WebRTC clients talking at once (default 1)"
    )
    parser.add_argument(
        "--turns", type=int, default=20, help="measured turns per session (default 20)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured first turns per session (1)"
    )
    parser.add_argument(
        "--turns-per-session",
        type=int,
        default=5,
        help="reconnect a client after this many turns (5)",
    )
    parser.add_argument("--speech-dir", default=str(SPEECH_DIR), help="fetch_speech.py output")
    parser.add_argument("--utterances", help="regex on utterance id or text")
    parser.add_argument("--questions", action="store_true", help="only utterances ending in '?'")
    parser.add_argument("--min-secs", type=float, default=1.0, help="shortest utterance (1.0)")
    parser.add_argument("--max-secs", type=float, default=6.0, help="longest utterance (6.0)")
    parser.add_argument("--seed", type=int, default=0, help="utterance order")
    parser.add_argument("--pause", type=float, default=1.0, help="silence between turns, s")
    parser.add_argument("--response-timeout", type=float, default=30.0)
    parser.add_argument("--max-reply-secs", type=float, default=40.0)
    parser.add_argument("--out", help="output folder (default bench_results/v2v-<target>-<time>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sessions < 1:
        raise SystemExit("--sessions must be at least 1")
    overrides = dict(DEFAULT_OVERRIDES)
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value
    utterances = pick_utterances(args)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "remote" if args.url else (args.profile or "cpu")
    if args.sessions > 1:
        label += f"-{args.sessions}sessions"
    out = Path(args.out or REPO_ROOT / "bench_results" / f"v2v-{label}-{stamp}")
    out.mkdir(parents=True, exist_ok=True)

    meta: dict = {"started": datetime.now().isoformat(timespec="seconds"), "hardware": hardware()}
    agent: AgentProcess | None = None
    if args.url:
        url = args.url.rstrip("/")
        meta |= {"target": url, "profile": None, "overrides": None}
    else:
        if webrtc_host_address() is None:
            raise SystemExit(
                "no IPv4 address other than 127.x (aiortc drops loopback candidates): "
                "ip addr add 10.203.0.1/32 dev lo"
            )
        profile = args.profile or "cpu"
        print(f"starting the agent (profile {profile}); log: {out / 'agent.log'}", flush=True)
        agent = start_agent(profile=profile, overrides=overrides, log_path=out / "agent.log")
        url = agent.url
        meta |= {
            "target": f"local agent at {url}",
            "profile": profile,
            "overrides": overrides,
            "agent_config": agent_config(profile, overrides),
        }
    meta["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    meta["sessions"] = args.sessions
    try:
        records = asyncio.run(run_sessions(url, utterances, args))
    finally:
        if agent is not None:
            agent.stop()

    summary = build_summary(records)
    table = format_table(summary, meta)
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "turns": records}, indent=2)
    )
    (out / "table.md").write_text(table + "\n")
    load = summary.get("load_avg_1min")
    title = (
        f"Voice-to-voice, {meta['target']}, profile {meta.get('profile') or '?'}"
        + (f", {args.sessions} sessions at once" if args.sessions > 1 else "")
        + (f", load avg {load['mean']:.1f}" if load else "")
    )
    plot(records, summary, out / "v2v.png", title)
    print()
    print(table)
    print(f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out / 'v2v.png'}")
    return 0 if summary.get("with_breakdown") else 1


if __name__ == "__main__":
    sys.exit(main())
