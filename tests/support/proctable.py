"""The process table, read from /proc: which processes of a session are still alive.

A program under test is started as the leader of a new session (``start_new_session=True``), so
every process it starts shares its session id, wherever the kernel re-parents it when its parent
dies. "No process of theirs is left" means: no live process in that session.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    return text[text.rindex(")") + 2 :].split()


def command_line(pid: int) -> str:
    """The process's command line, or '' once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def session_processes(session: int) -> dict[int, str]:
    """Live processes (zombies count as dead) of a session: pid -> command line."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is None or fields[0] in ("Z", "X") or int(fields[3]) != session:
            continue
        found[int(entry)] = command_line(int(entry))
    return found


def wait_until_gone(session: int, timeout: float) -> dict[int, str]:
    """Poll until no live process of ``session`` is left; returns the survivors (empty: none)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = session_processes(session)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def kill_session(session: int) -> None:
    """SIGKILL every live process of ``session`` (clean-up after a failed test: its own)."""
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
