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

The conversation mixes in what makes turn taking hard (issue 14): a share of the turns
(``--incomplete-share``) are recordings Smart Turn v3 judges INCOMPLETE at their last VAD stop
although they are complete statements (found by running Silero VAD and Smart Turn over the
speech cache once; cached beside it), and every ``--barge-in-every``-th turn is spoken over the
previous answer, ``--barge-in-after`` seconds into it, which times how soon the bot's audio
stops after the user's speech starts (at the client). The agent's RTVI ``turn-end`` messages
say which rule ended each turn and how many speculative answers were kept or dropped.

Examples::

    python scripts/bench_v2v.py --profile cpu --turns 20
    python scripts/bench_v2v.py --profile cpu --sessions 4 --turns 8   # 4 users at once
    python scripts/bench_v2v.py --url http://gpu-box:7860 --turns 50   # agent runs elsewhere
    python scripts/bench_v2v.py --profile nvidia --set llm.base_url=http://127.0.0.1:8000/v1
    python scripts/bench_v2v.py --profile cpu --turns 30 --incomplete-share 0 --barge-in-every 0
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
from collections import Counter
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
# When the bench starts the agent, replies are capped so turns stay short, and greedy so two
# runs (two builds, two settings) hear the same replies: at temperature 0.7 a reply's first
# clause ("Sure, " or a 40-character sentence) differed from run to run, and with it the wait
# for the TTS's first words. Pass --set to change either (llm.temperature=0.7 is the default).
DEFAULT_OVERRIDES = {"llm.max_tokens": "60", "llm.temperature": "0"}
# Issue 14's targets for the cpu profile on two cores (ms).
TARGETS_MS = {"p50": 700, "p90": 1000, "max": 1500, "barge_in_stop_max": 150}
VERDICTS_FILE = "smart_turn_verdicts.json"
VERDICTS_VERSION = 1


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
    # A speculative answer's first token can come before the turn is confirmed: that time is
    # hidden behind turn detection, reported beside the stages rather than as one of them.
    hidden = turn.server_latency.get("hidden") or {}
    times["llm_hidden"] = float(hidden.get("llm_inference", 0.0))
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
    summary["count"] = len(values)
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


def smart_turn_verdicts(utterances: list[Utterance], speech_dir: Path) -> dict[str, bool]:
    """Whether Smart Turn v3 judges each recording complete at its last VAD stop (cached).

    The agent's own analyzers (Silero VAD with the agent's defaults, Smart Turn v3 with Pipecat's
    parameters) run over each file with 0.5 s of silence before and 1 s after, fed in 20 ms
    frames as the agent gets them; the verdict is the one at the last VAD stop.
    """
    cache = Path(speech_dir).expanduser() / VERDICTS_FILE
    try:
        stored = json.loads(cache.read_text())
        if stored.get("version") == VERDICTS_VERSION:
            verdicts = stored["complete"]
            if all(u.id in verdicts for u in utterances):
                return verdicts
    except (OSError, ValueError, KeyError):
        pass
    from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams, VADState

    from tests.e2e.voice_client import load_audio

    print(f"judging {len(utterances)} recordings with Smart Turn v3 (once; cached in {cache})")

    async def judge(audio: np.ndarray) -> bool:
        vad = SileroVADAnalyzer(params=VADParams(stop_secs=0.2))
        vad.set_sample_rate(16000)
        turn = LocalSmartTurnAnalyzerV3()
        turn.set_sample_rate(16000)
        pcm = np.concatenate([np.zeros(8000, np.int16), audio, np.zeros(16000, np.int16)])
        speaking, verdict = False, True
        for i in range(0, len(pcm) - 319, 320):
            chunk = pcm[i : i + 320].tobytes()
            state = await vad.analyze_audio(chunk)
            now_speaking = state in (VADState.SPEAKING, VADState.STOPPING)
            turn.append_audio(chunk, now_speaking)
            if speaking and state == VADState.QUIET:
                result, _ = await turn.analyze_end_of_turn()
                verdict = result == EndOfTurnState.COMPLETE
            speaking = state == VADState.SPEAKING or (speaking and state != VADState.QUIET)
        await turn.cleanup()
        await vad.cleanup()
        return verdict

    async def judge_all() -> dict[str, bool]:
        return {u.id: await judge(load_audio(u.path)) for u in utterances}

    from loguru import logger

    logger.remove()  # the analyzers log every decision
    verdicts = asyncio.run(judge_all())
    cache.write_text(json.dumps({"version": VERDICTS_VERSION, "complete": verdicts}))
    return verdicts


# Asterisk prompts that are the first half of a sentence (a number, a key or a menu item
# follows in the real prompt), hand-labelled: Smart Turn's INCOMPLETE is right on them, and a
# benchmark of statements it misjudges must not count them. Their words pass the text rule.
FRAGMENTS = {
    "asterisk/confbridge-lock-in": "To lock, or unlock the conference",
    "asterisk/confbridge-menu-exit-in": "To exit the menu",
    "asterisk/dir-pls-enter": "Please enter the first",
    "asterisk/if-correct-press": "If this is correct, press",
    "asterisk/queue-thereare": "You are currently caller number",
}


def reads_finished(utterance: Utterance) -> bool:
    """Two words or more, no unfinished ending by the agent's own text rule (words only), and
    not one of the hand-labelled :data:`FRAGMENTS`."""
    from pipelines.turn_text import unfinished_cue, words_of

    if utterance.id in FRAGMENTS:
        return False
    found = words_of(utterance.text)
    return len(found) >= 2 and unfinished_cue(found) is None


def plan_conversation(
    utterances: list[Utterance], verdicts: dict[str, bool], args: argparse.Namespace
) -> list[tuple[Utterance, str]]:
    """``(utterance, kind)`` for every turn of one session, warm-up first.

    ``kind`` is ``incomplete`` (a recording of two words or more that Smart Turn judges
    INCOMPLETE, whose words do not end unfinished) or ``regular``; the shares follow
    ``--incomplete-share`` evenly through the conversation. Recordings that do end unfinished
    ("incoming call from") are left out: they wait ``turn.incomplete_timeout_secs`` by design.
    """
    incomplete = [u for u in utterances if verdicts.get(u.id) is False and reads_finished(u)]
    regular = [u for u in utterances if verdicts.get(u.id, True)]
    total = args.warmup + args.turns
    plan: list[tuple[Utterance, str]] = []
    used: Counter[str] = Counter()
    for index in range(total):
        measured = index - args.warmup
        share = args.incomplete_share
        due = (
            measured >= 0
            and bool(incomplete)
            and int((measured + 1) * share) > int(measured * share)
        )
        pool, kind = (incomplete, "incomplete") if due else (regular, "regular")
        plan.append((pool[used[kind] % len(pool)], kind))
        used[kind] += 1
    return plan


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
    url: str, utterances: list[Utterance], args: argparse.Namespace, verdicts: dict[str, bool]
) -> list[dict]:
    """Run ``args.sessions`` clients at once, each speaking its own turns; all their records."""
    per_session = []
    for s in range(args.sessions):
        # Each session its own turns: rotate the list, as the sessions used to by offset.
        offset = s * (args.warmup + args.turns)
        rotated = utterances[offset % len(utterances) :] + utterances[: offset % len(utterances)]
        per_session.append(plan_conversation(rotated, verdicts, args))
    per_session = await asyncio.gather(
        *(run_turns(url, plan, args, session=s) for s, plan in enumerate(per_session))
    )
    return sorted((r for records in per_session for r in records), key=lambda r: r["finished"])


def is_barge_in(index: int, args: argparse.Namespace) -> bool:
    """Whether turn ``index`` (warm-up included) is spoken over the previous answer."""
    measured = index - args.warmup
    in_session = index % args.turns_per_session
    return (
        args.barge_in_every > 0
        and measured >= 0
        and in_session > 0  # a fresh connection has no answer to talk over
        and (measured + 1) % args.barge_in_every == 0
    )


async def run_turns(
    url: str, plan: list[tuple[Utterance, str]], args: argparse.Namespace, *, session: int = 0
) -> list[dict]:
    """Speak the planned utterances, reconnecting every few turns.

    ``session`` numbers the client among those running at once. A barge-in turn starts while
    the previous answer plays; that answer's turn returns ``--barge-in-after`` s into it.
    """
    records: list[dict] = []
    total = len(plan)
    same_host = _same_host(url)
    client: VoiceClient | None = None
    turns_in_session = 0
    connection = -1
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
                connection += 1
                await asyncio.sleep(args.pause)
            utterance, kind = plan[index]
            barge_in = is_barge_in(index, args) and turns_in_session > 0
            next_barges_in = (
                index + 1 < total
                and is_barge_in(index + 1, args)
                and turns_in_session + 1 < args.turns_per_session
            )
            turn = await client.say(
                utterance.path,
                response_timeout=args.response_timeout,
                max_reply_secs=args.max_reply_secs,
                return_after_secs=args.barge_in_after if next_barges_in else None,
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
                "kind": kind,
                "connection": connection,
                "barge_in": barge_in,
                # From the user's first voiced 20 ms to the bot's last voiced frame over it.
                "barge_in_stop_secs": turn.barge_in_stop_secs if barge_in else None,
                "cut_short": next_barges_in,
                # The agent's RTVI turn-end reports in this turn's window (rule, counters).
                "turn_ends": [
                    m["data"]
                    for m in turn.messages
                    if m.get("type") == "server-message"
                    and (m.get("data") or {}).get("type") == "turn-end"
                ],
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
            tag += f"{kind} " if kind != "regular" else ""
            if barge_in:
                stop = turn.barge_in_stop_secs
                tag += "barge-in " + (
                    "(no bot audio) " if stop is None else f"{stop * 1000:.0f} ms "
                )
            rules = ",".join(str(e.get("rule")) for e in record["turn_ends"])
            print(
                f"{tag_session}[{index + 1}/{total}] {tag}{v2v:>9} [{rules}] "
                f"heard {turn.user_transcript!r} -> {turn.bot_text[:60]!r}",
                flush=True,
            )
            if not next_barges_in:
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
    # Per kind of turn, and against the targets.
    summary["by_kind"] = {}
    for kind in ("regular", "incomplete"):
        heard = [r["voice_to_voice_secs"] for r in measured if r.get("kind") == kind]
        heard = [v for v in heard if v]
        if heard:
            summary["by_kind"][kind] = summarize(heard)
    barges = [r for r in measured if r.get("barge_in")]
    stops = [r["barge_in_stop_secs"] for r in barges if r.get("barge_in_stop_secs") is not None]
    summary["barge_in"] = {
        "turns": len(barges),
        "stopped_while_speaking": len(stops),
        "stop_secs": summarize(stops) if stops else None,
    }
    rules: Counter[str] = Counter()
    for r in measured:
        for end in r.get("turn_ends") or []:
            rules[str(end.get("rule"))] += 1
    summary["turn_end_rules"] = dict(rules)
    # Counters are per connection (each is a new pipeline): the last report of each, summed.
    last: dict[tuple, dict] = {}
    for r in records:
        for end in r.get("turn_ends") or []:
            last[(r.get("session", 0), r.get("connection", 0))] = end
    speculations = sum(int(e.get("speculations") or 0) for e in last.values())
    kept = sum(int(e.get("speculations_kept") or 0) for e in last.values())
    summary["speculations"] = {
        "started": speculations,
        "kept": kept,
        "dropped": speculations - kept,
    }
    decided = Counter()
    for e in last.values():
        decided.update({k: int(v) for k, v in (e.get("barge_in") or {}).items()})
    summary["barge_in"]["agent_decisions"] = dict(decided)
    if "voice_to_voice" in summary:
        v2v = summary["voice_to_voice"]
        worst_stop = summary["barge_in"]["stop_secs"]
        summary["targets"] = {
            "p50": [round(v2v["p50"] * 1000), TARGETS_MS["p50"]],
            "p90": [round(v2v["p90"] * 1000), TARGETS_MS["p90"]],
            "max": [round(v2v["max"] * 1000), TARGETS_MS["max"]],
            "barge_in_stop_max": [
                None if not worst_stop else round(worst_stop["max"] * 1000),
                TARGETS_MS["barge_in_stop_max"],
            ],
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
    keys.insert(keys.index("llm") + 1, "llm_hidden")  # stage_times always sets it
    keys += ["server_total", "agent_overhead", "overhead", "overhead_llm_to_sentence", "total"]
    summary["stages"] = {key: summarize([r["stages"][key] for r in timed]) for key in keys}
    # Each turn's stages add up to its voice-to-voice time, so their means add up to the mean.
    stage_names = [name for name, _, _ in STAGES]
    summary["stage_means_sum_secs"] = sum(summary["stages"][n]["mean"] for n in stage_names)
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
    lines += conversation_lines(summary)
    if "stages" not in summary:
        return "\n".join(lines + ["no turn had a reply with a latency breakdown"])
    header = "| stage | " + " | ".join(f"p{p} ms" for p in PERCENTILES) + " | mean ms |"
    lines += [header, "|" + "---|" * (len(PERCENTILES) + 2)]
    labels = {name: label for name, label, _ in STAGES}
    labels |= {
        "vad_tail": "  of which the VAD's lag past stop_secs (Silero, 32 ms windows)",
        "llm_hidden": "  LLM first token hidden behind turn detection (not in the sum)",
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
    if "stage_means_sum_secs" in summary:
        lines.append(
            f"| sum of the stage means (= mean voice-to-voice of these turns) | | | | "
            f"{summary['stage_means_sum_secs'] * 1000:.0f} |"
        )
    lines += [
        "",
        "Stage rows cover the turns with the agent's breakdown; percentiles are taken per stage,",
        "so they do not add up to the total's; the means do (each turn's stages add up to it).",
    ]
    return "\n".join(lines)


def conversation_lines(summary: dict) -> list[str]:
    """Targets, turn kinds, turn-end rules, speculations and barge-in, as table rows."""
    lines: list[str] = []
    targets = summary.get("targets")
    if targets:
        lines += ["| issue 14 target | measured ms | target ms | met |", "|---|---|---|---|"]
        for name, (value, target) in targets.items():
            met = "-" if value is None else ("yes" if value <= target else "no")
            lines.append(f"| {name} | {'-' if value is None else value} | <= {target} | {met} |")
        lines.append("")
    kinds = summary.get("by_kind") or {}
    if kinds:
        lines += ["| turns | n | p50 ms | p90 ms | max ms |", "|---|---|---|---|---|"]
        for kind, stats in kinds.items():
            label = {
                "regular": "regular recordings",
                "incomplete": "statements Smart Turn judges INCOMPLETE",
            }[kind]
            lines.append(
                f"| {label} | {stats['count']} | {stats['p50'] * 1000:.0f} | "
                f"{stats['p90'] * 1000:.0f} | {stats['max'] * 1000:.0f} |"
            )
        lines.append("")
    rules = summary.get("turn_end_rules") or {}
    spec = summary.get("speculations") or {}
    barge = summary.get("barge_in") or {}
    lines.append(
        "Turn ends by rule: "
        + (", ".join(f"{rule} {count}" for rule, count in sorted(rules.items())) or "none reported")
        + f". Speculative answers: {spec.get('started', 0)} started, {spec.get('kept', 0)} kept, "
        f"{spec.get('dropped', 0)} dropped."
    )
    stops = barge.get("stop_secs")
    if barge.get("turns"):
        lines.append(
            f"Barge-in: {barge['turns']} turns spoken over the answer; bot audio stopped "
            + (
                f"{stops['p50'] * 1000:.0f} ms p50, {stops['max'] * 1000:.0f} ms max after the "
                f"user's speech started ({barge['stopped_while_speaking']} measured)"
                if stops
                else "(never measured: the bot was not speaking)"
            )
            + f"; the agent decided {barge.get('agent_decisions') or {}}."
        )
    lines.append("")
    return lines


def plot(records: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in records if not r["warmup"] and r["stages"]]
    answered = [r for r in records if not r["warmup"] and r["voice_to_voice_secs"]]
    if not answered:
        return
    stops = [
        (r["index"], r["barge_in_stop_secs"] * 1000)
        for r in records
        if not r["warmup"] and r.get("barge_in_stop_secs") is not None
    ]
    panels = 3 if stops else 2
    fig, axes = plt.subplots(
        1, panels, figsize=(6.5 * panels, 5.5), gridspec_kw={"width_ratios": [2, 1, 1][:panels]}
    )
    bars, cdf = axes[0], axes[1]
    x = np.arange(len(timed))
    bottom = np.zeros(len(timed))
    colors = plt.get_cmap("tab10").colors
    for i, (name, label, _) in enumerate(STAGES):
        values = np.array([max(0.0, r["stages"][name]) * 1000 for r in timed])
        bars.bar(x, values, bottom=bottom, label=label, color=colors[i % len(colors)])
        bottom += values
    totals = np.array([r["stages"]["total"] * 1000 for r in timed])
    bars.plot(x, totals, "k.", label="client voice-to-voice")
    hard = [i for i, r in enumerate(timed) if r.get("kind") == "incomplete"]
    if hard:
        bars.plot(x[hard], totals[hard] + 60, "rv", label="Smart Turn: INCOMPLETE statement")
    bars.axhline(TARGETS_MS["p50"], color="green", linestyle=":", linewidth=1)
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
    if stops:
        axis = axes[2]
        axis.bar([str(i) for i, _ in stops], [ms for _, ms in stops], color="tab:purple")
        axis.axhline(TARGETS_MS["barge_in_stop_max"], color="red", linestyle="--")
        axis.text(0, TARGETS_MS["barge_in_stop_max"] + 3, " target", fontsize=8, color="red")
        axis.set_xlabel("barge-in turn")
        axis.set_ylabel("ms from the user's speech to the bot's last audio (client)")
        axis.set_title("Barge-in: bot audio stop")
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
        help="config override of the started agent (default llm.max_tokens=60, llm.temperature=0)",
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
    parser.add_argument(
        "--incomplete-share",
        type=float,
        default=1 / 3,
        help="share of measured turns that are statements Smart Turn judges INCOMPLETE (1/3)",
    )
    parser.add_argument(
        "--barge-in-every",
        type=int,
        default=4,
        help="every Nth measured turn talks over the previous answer (4; 0: never)",
    )
    parser.add_argument(
        "--barge-in-after",
        type=float,
        default=1.0,
        help="seconds into the answer a barge-in starts (1.0)",
    )
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
    verdicts = (
        smart_turn_verdicts(load_utterances(args.speech_dir), Path(args.speech_dir))
        if args.incomplete_share > 0
        else {}
    )
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
    meta["conversation"] = {
        "incomplete_share": args.incomplete_share,
        "barge_in_every": args.barge_in_every,
        "barge_in_after_secs": args.barge_in_after,
        "turns_per_session": args.turns_per_session,
        "smart_turn_incomplete_in_range_reading_finished": sum(
            1 for u in utterances if verdicts.get(u.id) is False and reads_finished(u)
        ),
        "smart_turn_incomplete_all": sum(1 for v in verdicts.values() if v is False),
        "fragments_left_out": sorted(u.id for u in utterances if u.id in FRAGMENTS),
        "recordings_judged": len(verdicts),
    }
    try:
        records = asyncio.run(run_sessions(url, utterances, args, verdicts))
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
