"""A CPU-faster copy of a Q4_1 GGUF: the same weights as Q8_0, made once and cached.

llama.cpp's CPU kernels run Q8_0 weights faster than Q4_1 ones, and every Q4_1 value has a
close Q8_0 neighbour, so the copy answers as the original does. Measured on 2 AMD EPYC vCPUs
(llama-cpp-python 0.3.36, AVX2 build, 2 threads) with the packaged SmolLM2-135M-Instruct Q4_1:

=====================================  ======  ======
                                       Q4_1    Q8_0
=====================================  ======  ======
15 new prompt tokens after 100 cached  56 ms   41 ms
200 prompt tokens, cold                673 ms  387 ms
one generated token                    9.4 ms  8.2 ms
mean NLL on English text (nats/token)  1.658   1.649
=====================================  ======  ======

(top-1 token agreement with Q4_1: 96.6%; Q4_0, for comparison, was faster still but lost
quality: NLL 1.737, 81% agreement.) In a conversation only the new turn is prefilled, ~10-35
tokens: that is the LLM's part of the voice-to-voice time. The copy costs ~0.6 s once and 1.6x
the file size on disk. Other types are served as they are.

Run as ``python -m services.llm.gguf_requantize SRC DST`` (a child process: the app itself
never loads llama.cpp).
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from loguru import logger

# llama.cpp's ``enum llama_ftype`` values (include/llama.h).
FTYPE_Q4_1 = 3
FTYPE_Q8_0 = 7
# GGUF metadata value types (gguf.md): fixed sizes, 8 = string, 9 = array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_lock = threading.Lock()


def cache_dir() -> Path:
    """Where copies go: ``$VOICE_AGENT_CACHE/llm`` (default ``~/.cache/voice-agent/llm``)."""
    return Path(os.environ.get("VOICE_AGENT_CACHE", "~/.cache/voice-agent")).expanduser() / "llm"


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind in _SCALAR_SIZES:
        f.seek(_SCALAR_SIZES[kind], os.SEEK_CUR)
    elif kind == _STRING:
        f.seek(_read(f, "<Q"), os.SEEK_CUR)
    elif kind == _ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _SCALAR_SIZES:
            f.seek(_SCALAR_SIZES[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_value(f, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def file_type(path: str | Path) -> int | None:
    """The GGUF's ``general.file_type`` (a llama_ftype), or None if it has none or is no GGUF."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
            version = _read(f, "<I")
            if version < 2:  # v1 used 32-bit counts; no current file is v1
                return None
            _read(f, "<Q")  # tensor count
            for _ in range(_read(f, "<Q")):
                key = f.read(_read(f, "<Q")).decode("utf-8", "replace")
                kind = _read(f, "<I")
                if key == "general.file_type" and kind in (4, 5):
                    return _read(f, "<I" if kind == 4 else "<i")
                _skip_value(f, kind)
    except (OSError, ValueError, struct.error):
        return None
    return None


def copy_path(src: Path) -> Path:
    """The cached copy's name: the source's name, size and mtime (a changed file gets a new one)."""
    stat = src.stat()
    return cache_dir() / f"{src.stem}.{stat.st_size}-{stat.st_mtime_ns}.Q8_0.gguf"


def convert(src: str | Path, dst: str | Path, threads: int = 2) -> None:
    """Write ``src`` re-quantized as Q8_0 to ``dst`` (atomically, via a temporary file)."""
    import ctypes

    import llama_cpp

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPE_Q8_0
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    os.replace(tmp, dst)


def served_gguf(src: str | Path, *, mode: str = "auto", launcher: list[str] | None = None,
                env: dict[str, str] | None = None) -> Path:  # fmt: skip
    """The file to serve for ``src``: its cached Q8_0 copy when ``mode`` is "auto" and it is Q4_1.

    Makes the copy in a child process (``launcher`` + this module, e.g. the llama server's own
    launcher that ties the child's life to the app's) the first time. Any failure is logged and
    the original is served: the copy only makes it faster.
    """
    src = Path(src).expanduser()
    if mode == "off" or file_type(src) != FTYPE_Q4_1:
        return src
    try:
        dst = copy_path(src)
        with _lock:
            if dst.is_file():
                return dst
            dst.parent.mkdir(parents=True, exist_ok=True)
            logger.info(f"llm: re-packing {src.name} (Q4_1) as Q8_0 for faster CPU kernels, once")
            cmd = (launcher or [sys.executable, "-m"]) + [__name__, str(src), str(dst)]
            done = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            if done.returncode != 0 or not dst.is_file():
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"exit {done.returncode}: {' / '.join(tail)}")
            return dst
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        logger.warning(
            f"llm: could not make a Q8_0 copy of {src.name} ({e}); serving the Q4_1 file "
            "(set llm.requantize = 'off' to skip this step)"
        )
        return src


async def served_gguf_async(src: str | Path, **kwargs) -> Path:
    """:func:`served_gguf` on a worker thread (the copy takes ~0.6 s once)."""
    return await asyncio.to_thread(served_gguf, src, **kwargs)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
