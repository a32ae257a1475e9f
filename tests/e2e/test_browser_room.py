"""A real browser (headless Chromium) uses the room page with a recorded question as its mic.

Chromium's fake capture device plays a WAV file (real human speech) into getUserMedia; the test
presses Connect and checks what a user would see and hear: their transcript, the bot's reply,
who is speaking, the turn's latency as a bar split by stage and a point on the session's chart,
the models in use, bot audio reaching the page's <audio> element (WebRTC stats), and the
microphone controls: the picker lists Chromium's fake devices, switching one replaces the
track the connection sends (the agent hears the new one), and mute silences the level meter
and what is sent.

Chromium's fake devices each play the WAV from its start when opened, so picking another
device in the room replays the question: heard while unmuted, not while muted.
"""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.speech import word_error_rate, words
from tests.e2e.voice_client import SAMPLE_RATE, load_audio

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
# Silence before the question: the fake device starts playing at getUserMedia, before the call
# is up and the bot's pipeline is listening.
LEAD_SILENCE_SECS = 4.0
TAIL_SILENCE_SECS = 2.0
# Chromium's fake capture devices (--use-fake-device-for-media-stream).
FAKE_DEFAULT_MIC = "Fake Default Audio Input"
FAKE_MICS = ("Fake Audio Input 1", "Fake Audio Input 2")

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

# For `ms` milliseconds: the highest value the page's level meter showed, and the audio energy
# the connection's sender took in from its current track (WebRTC media-source stats; a
# disabled track adds none).
MIC_WINDOW_JS = """async (ms) => {
  const va = window.voiceAgent;
  const sent = async () => {
    let energy = 0;
    (await va.pc.getStats()).forEach((s) => {
      if (s.type === "media-source" && s.kind === "audio"
          && s.trackIdentifier === va.sender.track.id) energy = s.totalAudioEnergy || 0;
    });
    return energy;
  };
  const before = await sent();
  let maxLevel = 0;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    maxLevel = Math.max(maxLevel, Number(document.getElementById("level").value));
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
  return { maxLevel, sentEnergy: (await sent()) - before };
}"""

# What the room shows, read from the DOM (what a user sees), not from the page's state.
DOM_JS = """() => {
  const text = (el) => el ? el.textContent.trim() : null;
  const box = (el) => el.getBoundingClientRect().width;
  return {
    user: [...document.querySelectorAll("#log .turn.user")].map((el) => el.innerText.trim()),
    bot: [...document.querySelectorAll("#log .turn.bot")].map((el) => el.innerText.trim()),
    latency: [...document.querySelectorAll("#log .latency-text")].map(text),
    bars: [...document.querySelectorAll("#log .bar")].map((bar) => ({
      total_ms: Number(bar.dataset.totalMs), width: box(bar), label: bar.getAttribute("aria-label"),
      parts: [...bar.children].map((seg) => ({
        part: seg.dataset.part, ms: Number(seg.dataset.ms), width: box(seg),
        color: getComputedStyle(seg).backgroundColor })),
    })),
    points: [...document.querySelectorAll("#chart circle.point")].map((c) => text(c)),
    models: { stt: text(document.getElementById("model-stt")),
              llm: text(document.getElementById("model-llm")),
              tts: text(document.getElementById("model-tts")) },
    mics: [...document.querySelectorAll("#mic option")].map((o) => ({ label: o.label,
      value: o.value })),
    mic_selected: document.getElementById("mic").value,
    mute_pressed: document.getElementById("mute").getAttribute("aria-pressed"),
  };
}"""

# The connection's state that the picker and mute act on.
SENDER_JS = """() => {
  const va = window.voiceAgent, track = va.sender && va.sender.track;
  return { same_pc: va.pc === window.__firstPc, connection: va.pc && va.pc.connectionState,
           sending_label: track && track.label, sending_enabled: track && track.enabled,
           sending_device: track && track.getSettings().deviceId,
           sending_is_mic: Boolean(track) && track === va.mic.getAudioTracks()[0] };
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


def launch_chromium(playwright, mic: Path | None = None):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (scripts/setup_test_host.sh)")
    flags = list(CHROMIUM_FLAGS)
    if mic is not None:
        flags.append(f"--use-file-for-fake-audio-capture={mic}%noloop")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.fail("pip install playwright (never `playwright install`: we use Debian chromium)")
    return start()


def final_user_texts(events: list[dict]) -> list[str]:
    """The STT's final transcripts, as Pipecat's RTVI ``user-input`` messages carried them."""
    return [
        e["data"]["text"].strip()
        for e in events
        if e.get("type") == "user-input"
        and e["data"].get("final")
        and e["data"].get("input_type", "transcription") == "transcription"
        and e["data"].get("text", "").strip()
    ]


def expected_models(agent) -> dict[str, list[str]] | None:
    """Words the model names must contain for the agent the fixture started (``cpu`` profile)."""
    if isinstance(agent, str):  # $E2E_AGENT_URL: any profile, names unknown here
        return None
    from services.llm.llama_server import default_gguf_path

    return {
        "stt": ["whisper", "tiny.en"],
        "llm": ["local", default_gguf_path().name],
        "tts": ["hibari", "heart"],
    }


def test_room_page_in_chromium(agent, agent_url, agent_log, question, e2e_dir, record_property):
    mic = write_mic_wav(question.path, e2e_dir / "browser_mic.wav")
    replay_ms = int((LEAD_SILENCE_SECS + question.duration_s + 0.8) * 1000)
    console: list[str] = []
    requested: list[str] = []
    state = "window.voiceAgent"
    timings: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, mic)
        try:
            page = browser.new_page(viewport={"width": 860, "height": 600})
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{agent_url}/?raw=1")
            t0 = time.monotonic()
            page.click("#connect")
            page.wait_for_function(f"{state}.status === 'connected'", timeout=30_000)
            page.evaluate(f"() => {{ window.__firstPc = {state}.pc; }}")

            # One spoken turn, watched on the speaking indicator as it happens.
            page.wait_for_function(
                "document.getElementById('who-user').classList.contains('on')", timeout=40_000
            )
            timings["user_speaking"] = time.monotonic() - t0
            page.wait_for_function(
                f"{state}.transcript.some((t) => t.role === 'user' && t.text.trim())",
                timeout=60_000,
            )
            page.wait_for_function(
                "document.getElementById('who-bot').classList.contains('on')", timeout=60_000
            )
            timings["bot_speaking"] = time.monotonic() - t0
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
            # The reply is over before the microphone checks, so nothing overlaps them.
            page.wait_for_function(
                "!document.getElementById('who-bot').classList.contains('on')", timeout=60_000
            )
            timings["turn_done"] = time.monotonic() - t0
            first = page.evaluate(DOM_JS)
            first_events = page.evaluate(f"{state}.events")
            first_sender = page.evaluate(SENDER_JS)
            speaking_log = page.evaluate(f"{state}.speakingLog")

            # Mute, then pick another microphone: its replay of the question is not sent.
            finals_before = len(final_user_texts(first_events))
            page.click("#mute")
            page.select_option("#mic", label=FAKE_MICS[0])
            page.wait_for_function(
                f"{state}.sender.track.label === {json.dumps(FAKE_MICS[0])}", timeout=10_000
            )
            muted_sender = page.evaluate(SENDER_JS)
            muted_dom = page.evaluate(DOM_JS)
            muted = page.evaluate(MIC_WINDOW_JS, replay_ms)
            time.sleep(3.0)  # as long as a transcript of the replay would take to come back
            muted_finals = final_user_texts(page.evaluate(f"{state}.events"))[finals_before:]
            timings["muted_window_done"] = time.monotonic() - t0

            # Unmuted on the third microphone: the agent hears its replay, on the same call.
            page.select_option("#mic", label=FAKE_MICS[1])
            page.click("#mute")
            page.wait_for_function(
                f"{state}.sender.track.label === {json.dumps(FAKE_MICS[1])}", timeout=10_000
            )
            live = page.evaluate(MIC_WINDOW_JS, replay_ms)
            live_sender = page.evaluate(SENDER_JS)
            page.wait_for_function(
                f"{state}.transcript.filter((t) => t.role === 'user' && t.text.trim()).length > 1",
                timeout=60_000,
            )
            page.wait_for_function(f"{state}.latencies.length > 1", timeout=60_000)
            # While the agent answers: its indicator lit, two bars, two points on the chart.
            page.screenshot(path=str(e2e_dir / "room.png"), full_page=True)
            page.wait_for_function(
                "!document.getElementById('who-bot').classList.contains('on')", timeout=60_000
            )
            timings["second_turn_done"] = time.monotonic() - t0
            final = page.evaluate(DOM_JS)
            events = page.evaluate(f"{state}.events")
            latencies = page.evaluate(f"{state}.latencies")
            transcript = page.evaluate(f"{state}.transcript")
            page.click("#connect")  # hang up
            page.wait_for_function(f"{state}.status === 'disconnected'", timeout=5_000)
        finally:
            browser.close()

    finals = final_user_texts(events)
    report = {
        "question": question.text,
        "transcript": transcript,
        "stt_finals": finals,
        "latencies": latencies,
        "audio_stats": audio,
        "playout_buffer_ms": playout_buffer_ms(audio),
        "speaking_log": speaking_log,
        "first_turn_dom": first,
        "final_dom": final,
        "first_sender": first_sender,
        "muted": {"sender": muted_sender, "window": muted, "finals": muted_finals},
        "unmuted": {"sender": live_sender, "window": live},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "requested": requested,
        "console": console[-20:],
    }
    (e2e_dir / "browser_room.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    record_property("server_voice_to_voice_ms", round(latencies[0]["total_secs"] * 1000))

    # The user's words as the STT heard them (Pipecat's final user-input), then the agent's.
    first_finals = final_user_texts(first_events)
    assert first_finals, report
    assert first["user"] == ["You: " + " ".join(first_finals)], report
    assert word_error_rate(question.text, " ".join(first_finals)) <= 0.5, report
    assert len(first["bot"]) == 1 and len(words(first["bot"][0])) >= 3, report
    # Who spoke, in order: the user, then the agent (both also seen lit up in the DOM above).
    order = [(e["who"], e["on"]) for e in speaking_log]
    assert order[0] == ("user", True) and ("bot", True) in order, report
    bot_on = order.index(("bot", True))
    assert ("user", False) in order[:bot_on] and ("bot", False) in order[bot_on:], report

    # The turn's latency: a bar whose stages add up to the total the agent measured, drawn to
    # scale, and one point on the chart.
    assert len(first["bars"]) == 1 and len(first["latency"]) == 1, report
    bar, total_ms = first["bars"][0], latencies[0]["total_secs"] * 1000
    assert first["latency"][0].startswith(f"voice-to-voice {round(total_ms)} ms"), report
    assert len(bar["parts"]) >= 3, report  # at least VAD wait, transcription, LLM, ...
    assert abs(sum(p["ms"] for p in bar["parts"]) - total_ms) <= 0.5 + 0.1 * len(bar["parts"])
    assert abs(bar["total_ms"] - total_ms) < 0.1, report
    assert abs(sum(p["width"] for p in bar["parts"]) - bar["width"]) <= 1.0, report
    widest = max(bar["parts"], key=lambda p: p["width"])
    assert widest["ms"] == max(p["ms"] for p in bar["parts"]), report
    assert len({p["color"] for p in bar["parts"]}) == len(bar["parts"]), report
    assert len(first["points"]) == 1 and f"{round(total_ms)} ms" in first["points"][0], report

    # The models in use, as the agent's config names them.
    expected = expected_models(agent)
    for key, shown in first["models"].items():
        assert shown and shown not in ("–", "unknown"), report
        for word in (expected or {}).get(key, []):
            assert word in shown, (key, word, report)

    # The picker lists Chromium's fake microphones, the one in use selected.
    labels = [m["label"] for m in first["mics"]]
    assert FAKE_DEFAULT_MIC in labels and all(name in labels for name in FAKE_MICS), report
    assert first["mic_selected"] == first_sender["sending_device"], report

    # Muted and switched: the new device's track is sent on the same connection, disabled;
    # the meter and the sender stay silent and the agent transcribes nothing.
    assert muted_dom["mute_pressed"] == "true", report
    assert muted_sender["same_pc"] and muted_sender["connection"] == "connected", report
    assert muted_sender["sending_is_mic"] and muted_sender["sending_enabled"] is False, report
    assert muted_dom["mic_selected"] == muted_sender["sending_device"], report
    assert muted["maxLevel"] == 0, report
    assert muted["sentEnergy"] < 1e-4, report
    assert muted_finals == [], report

    # Unmuted on the third device: the meter moves, audio is sent, the agent hears the question
    # again over the same connection and answers: a second bar and a second chart point.
    assert final["mute_pressed"] == "false", report
    assert live_sender["same_pc"] and live_sender["connection"] == "connected", report
    assert live_sender["sending_enabled"] is True, report
    assert live["maxLevel"] > 0.3, report
    assert live["sentEnergy"] > 1e-3, report
    second_finals = finals[len(first_finals) :]
    assert second_finals, report
    assert word_error_rate(question.text, " ".join(second_finals)) <= 0.5, report
    assert len(final["bars"]) == 2 and len(final["points"]) == 2, report

    # What the user hears: audio with energy reached the page's <audio> element.
    assert audio is not None, "no inbound audio RTP stats"
    assert audio["energy"] > 0.01 and audio["samples"] > 0, report
    assert not [line for line in console if line.startswith("pageerror")], report
    # Everything the page loaded came from the agent itself: it works offline.
    assert requested and all(url.startswith(agent_url + "/") for url in requested), report


def _rtvi_messages_from_frames(frames) -> list[dict]:
    """The RTVI messages Pipecat's own observer makes of these frames, in order."""
    import asyncio

    from pipecat.observers.base_observer import FramePushed
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.processors.frameworks.rtvi import RTVIObserver

    sent: list[dict] = []

    class Capture(RTVIObserver):
        async def send_rtvi_message(self, model, exclude_none: bool = True):
            sent.append(model.model_dump(exclude_none=exclude_none))

    async def convert():
        observer, source = Capture(), FrameProcessor()
        for frame in frames:
            await observer.on_push_frame(
                FramePushed(source, source, frame, FrameDirection.DOWNSTREAM, 0)
            )

    asyncio.run(convert())
    return sent


def test_room_page_shows_interim_transcripts(agent_url):
    """A streaming STT's interim transcripts show while the user speaks, then the final.

    The ``cpu`` profile's Whisper has no interim transcripts, so the real page, served by the
    real agent, is given the RTVI messages Pipecat's observer makes of the frames a streaming
    STT (Nemotron) pushes, through the page's own message handler.
    """
    from pipecat.frames.frames import (
        InterimTranscriptionFrame,
        TranscriptionFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )

    def interim(text):
        return InterimTranscriptionFrame(text, "user", "2026-01-01T00:00:00")

    messages = _rtvi_messages_from_frames(
        [
            UserStartedSpeakingFrame(),
            interim("what"),
            interim("what time is"),
            TranscriptionFrame("What time is it?", "user", "2026-01-01T00:00:01", finalized=True),
            interim("in"),
            interim("in Paris"),
            TranscriptionFrame("In Paris.", "user", "2026-01-01T00:00:02", finalized=True),
            UserStoppedSpeakingFrame(),
        ]
    )
    # Pipecat sends user-input (and the deprecated user-transcription, which the page ignores).
    assert [m["type"] for m in messages].count("user-input") == 6, messages

    line = "#log .turn.user"
    seen = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{agent_url}/")
            for message in messages:
                page.evaluate("(m) => window.voiceAgent.receive(m)", message)
                if message["type"] in ("user-input", "user-started-speaking"):
                    seen.append(
                        {
                            "final": page.locator(f"{line} .text").all_inner_texts(),
                            "interim": page.locator(f"{line} .interim").all_inner_texts(),
                            "user_on": "on"
                            in (page.get_attribute("#who-user", "class") or "").split(),
                        }
                    )
            user_on_at_end = "on" in (page.get_attribute("#who-user", "class") or "").split()
        finally:
            browser.close()

    print(json.dumps(seen, indent=2))
    assert not errors, errors
    assert seen[0] == {"final": [], "interim": [], "user_on": True}, seen
    # Interim text shows as it comes, each replacing the last; the final replaces them all.
    assert seen[1]["final"] == [""] and seen[1]["interim"] == ["what"], seen
    assert seen[2]["interim"] == ["what time is"], seen
    assert seen[3] == {"final": ["What time is it?"], "interim": [""], "user_on": True}, seen
    # The next stretch of speech: interim after the first final, then both finals.
    assert seen[5]["final"] == ["What time is it?"] and seen[5]["interim"] == ["in Paris"], seen
    assert seen[6]["final"] == ["What time is it? In Paris."] and seen[6]["interim"] == [""]
    assert not user_on_at_end


def test_latency_bars_and_chart_are_drawn_to_scale(agent_url):
    """Each stage's share of a bar is its share of the turn, for fast turns too.

    The spoken turn above takes whatever the machine gives it; here the page, served by the
    agent, gets two ``turn-latency`` messages as ``agent/bot.py`` sends them (RTVI
    server-messages): a 620 ms turn and a 1.9 s one.
    """
    from pipecat.processors.frameworks.rtvi.models import ServerMessage

    turns = [
        {
            "endpointing_wait": 0.2,
            "transcription": 0.25,
            "turn_detection": 0.1,
            "speech_synthesis": 0.07,
        },
        {
            "endpointing_wait": 0.2,
            "transcription": 0.6,
            "llm_inference": 0.9,
            "speech_synthesis": 0.2,
        },
    ]
    # The first turn's answer was speculative: its LLM time ran behind turn detection.
    hidden = [{"llm_inference": 0.08}, {}]
    messages = [
        ServerMessage(
            data={
                "type": "turn-latency",
                "total_secs": sum(parts.values()),
                "parts": parts,
                "hidden": extra,
            }
        ).model_dump(exclude_none=True)
        for parts, extra in zip(turns, hidden, strict=True)
    ]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 860, "height": 600})
            page.goto(f"{agent_url}/")
            for message in messages:
                page.evaluate("(m) => window.voiceAgent.receive(m)", message)
            dom = page.evaluate(DOM_JS)
            dots = page.evaluate(
                """() => [...document.querySelectorAll("#chart circle.point")]
                     .map((c) => Number(c.getAttribute("cy")))"""
            )
        finally:
            browser.close()

    print(json.dumps(dom["bars"], indent=2))
    assert len(dom["bars"]) == 2 and len(dom["points"]) == 2, dom
    for bar, parts in zip(dom["bars"], turns, strict=True):
        total_ms = 1000 * sum(parts.values())
        assert [p["part"] for p in bar["parts"]] == list(parts), bar
        # The stages fill the bar, each by its share of the turn.
        assert abs(sum(p["width"] for p in bar["parts"]) - bar["width"]) <= 1.0, bar
        for part in bar["parts"]:
            assert abs(part["width"] / bar["width"] - part["ms"] / total_ms) < 0.01, bar
    # Both bars and the chart share one scale: the longer turn, a longer bar, a higher dot.
    ratio = dom["bars"][0]["width"] / dom["bars"][1]["width"]
    assert abs(ratio - sum(turns[0].values()) / sum(turns[1].values())) < 0.01, dom
    assert dots[1] < dots[0], dots
    assert "620 ms" in dom["points"][0] and "1900 ms" in dom["points"][1], dom
    # Hidden time is named in the text, never drawn as a stage of the bar.
    assert dom["latency"][0].endswith("; LLM 80 ms hidden behind turn detection"), dom["latency"]
    assert "hidden" not in dom["latency"][1], dom["latency"]
