"""A real browser (headless Chromium) uses the room page with a recorded question as its mic.

Chromium's fake capture device plays a WAV file (real human speech) into getUserMedia; the test
presses Connect and checks what a user would see and hear: their transcript, the bot's reply,
the turn's latency, and bot audio reaching the page's <audio> element (WebRTC stats).
"""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.voice_client import SAMPLE_RATE, load_audio

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
# Silence before the question: the fake device starts playing at getUserMedia, before the call
# is up and the bot's pipeline is listening.
LEAD_SILENCE_SECS = 4.0
TAIL_SILENCE_SECS = 2.0

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Lets a host whose only non-127 address sits on `lo` (CI set-up) still make calls.
    "--allow-loopback-in-peer-connection",
]

AUDIO_STATS_JS = """async () => {
  const pc = window.voiceAgent.pc;
  if (!pc) return null;
  const stats = await pc.getStats();
  let found = null;
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      // jitterBuffer*: what Chromium's adaptive playout buffer held (seconds summed over the
      // samples it emitted), reported to compare with the Python client, which has none.
      found = { energy: s.totalAudioEnergy || 0, samples: s.totalSamplesReceived || 0,
                bytes: s.bytesReceived || 0,
                jitterBufferDelay: s.jitterBufferDelay || 0,
                jitterBufferTargetDelay: s.jitterBufferTargetDelay || 0,
                jitterBufferEmittedCount: s.jitterBufferEmittedCount || 0 };
    }
  });
  return found;
}"""


def playout_buffer_ms(audio: dict | None) -> dict[str, float] | None:
    """Chromium's mean jitter-buffer delay and target for the bot's audio, in ms."""
    emitted = (audio or {}).get("jitterBufferEmittedCount") or 0
    if not emitted:
        return None
    return {
        "mean": round(1000 * audio["jitterBufferDelay"] / emitted, 1),
        "target": round(1000 * audio["jitterBufferTargetDelay"] / emitted, 1),
    }


def write_mic_wav(source: Path, target: Path) -> Path:
    """The recording with silence around it, as 16-bit mono WAV for the fake capture device."""
    speech = load_audio(source, SAMPLE_RATE)
    lead = np.zeros(int(LEAD_SILENCE_SECS * SAMPLE_RATE), np.int16)
    tail = np.zeros(int(TAIL_SILENCE_SECS * SAMPLE_RATE), np.int16)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.concatenate([lead, speech, tail]).tobytes())
    return target


def test_room_page_in_chromium(agent_url, agent_log, question, e2e_dir, record_property):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("pip install playwright (never `playwright install`: we use Debian chromium)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (scripts/setup_test_host.sh)")

    mic = write_mic_wav(question.path, e2e_dir / "browser_mic.wav")
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={mic}%noloop"],
        )
        try:
            page = browser.new_page()
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            page.goto(f"{agent_url}/?raw=1")
            page.click("#connect")

            state = "window.voiceAgent"
            page.wait_for_function(f"{state}.status === 'connected'", timeout=30_000)
            page.wait_for_function(
                f"{state}.transcript.some((t) => t.role === 'user' && t.text.trim())",
                timeout=60_000,
            )
            page.wait_for_function(
                f"{state}.transcript.some((t) => t.role === 'bot' && t.text.trim())",
                timeout=60_000,
            )
            page.wait_for_function(f"{state}.latencies.length > 0", timeout=30_000)

            audio = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                audio = page.evaluate(AUDIO_STATS_JS)
                if audio and audio["energy"] > 0.01:
                    break
                time.sleep(0.5)

            transcript = page.evaluate(f"{state}.transcript")
            latencies = page.evaluate(f"{state}.latencies")
            user_lines = page.locator("#log .turn.user").all_inner_texts()
            bot_lines = page.locator("#log .turn.bot").all_inner_texts()
            latency_lines = page.locator("#log .latency").all_inner_texts()
            page.screenshot(path=str(e2e_dir / "room.png"), full_page=True)
            page.click("#connect")  # hang up
            page.wait_for_function(f"{state}.status === 'disconnected'", timeout=5_000)
        finally:
            browser.close()

    report = {
        "question": question.text,
        "transcript": transcript,
        "latencies": latencies,
        "audio_stats": audio,
        "playout_buffer_ms": playout_buffer_ms(audio),
        "dom": {"user": user_lines, "bot": bot_lines, "latency": latency_lines},
        "console": console[-20:],
    }
    (e2e_dir / "browser_room.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    record_property("server_voice_to_voice_ms", round(latencies[0]["total_secs"] * 1000))

    # What the user sees: their words, the agent's words, and the turn's latency.
    assert any(line.strip() for line in user_lines), report
    assert any(line.strip() for line in bot_lines), report
    assert any("voice-to-voice" in line for line in latency_lines), report
    assert latencies[0]["total_secs"] > 0
    # What the user hears: audio with energy reached the page's <audio> element.
    assert audio is not None, "no inbound audio RTP stats"
    assert audio["energy"] > 0.01 and audio["samples"] > 0, report
    assert not [line for line in console if line.startswith("pageerror")], report
