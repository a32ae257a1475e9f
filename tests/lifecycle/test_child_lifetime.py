"""services/lifetime.py on real processes: a child dies with its parent, however the parent dies.

Each test runs a real parent process that starts a real child, kills the parent with SIGKILL (so
none of its own clean-up runs) and reads the process table for the child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.lifetime import on_lasting_thread
from tests.support.proctable import command_line

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

# Starts the child given as argv[1], waits until it is set up, prints its pid, then waits.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
time.sleep(120)
"""
CHILD = """
import os, signal, time
from services.lifetime import die_with_parent
{setup}
die_with_parent(os.getppid(), {options})
print("ready", flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZX"


def wait_dead(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` ended, or None if it still runs after ``timeout``."""
    started = time.monotonic()
    while alive(pid):
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - started


def start_family(options: str, setup: str = "") -> tuple[subprocess.Popen, int]:
    """A parent process and the child it started (tied to it with ``options``)."""
    child_code = CHILD.format(setup=setup, options=options)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, child_code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = parent.stdout.readline().strip()
    assert line.isdigit(), f"parent printed {line!r}"
    return parent, int(line)


def kill_parent_and_time_child(options: str, timeout: float, setup: str = "") -> float | None:
    parent, child = start_family(options, setup)
    try:
        assert alive(child) and "die_with_parent" in command_line(child)
        parent.kill()  # SIGKILL: the parent's own clean-up never runs
        parent.wait(5)
        return wait_dead(child, timeout)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


@linux_only
def test_the_kernel_ends_the_child_at_once_when_its_parent_is_killed():
    # The watcher off: only PR_SET_PDEATHSIG can end it, and it does so at once.
    took = kill_parent_and_time_child("watch=False", timeout=1.0)
    assert took is not None, "the child outlived its parent by 1 s without the watcher"


def test_without_the_kernel_signal_the_watcher_ends_the_child():
    # As on a platform without prctl: the watcher sees the parent go and stops the child.
    took = kill_parent_and_time_child("pdeathsig=False", timeout=5.0)
    assert took is not None, "the child outlived its parent by 5 s"


def test_a_child_that_ignores_the_stop_signal_is_ended_after_the_grace_period():
    took = kill_parent_and_time_child(
        "pdeathsig=False, grace_s=0.5",
        timeout=5.0,
        setup="signal.signal(signal.SIGTERM, signal.SIG_IGN)",
    )
    assert took is not None, "a child deaf to SIGTERM outlived its parent by 5 s"


def test_a_child_whose_parent_is_already_gone_stops_at_once():
    # Its parent died before the child could ask the kernel: the pid it was given is not its
    # parent any more, and nobody would signal it.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD.format(setup="", options="watch=False").replace(
                "os.getppid()", "os.getppid() + 4_000_000"
            ),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert child.returncode == -signal.SIGTERM and "ready" not in child.stdout


@linux_only
def test_a_child_started_from_a_thread_that_ends_outlives_the_thread():
    # The kernel's parent is the thread that forked: a child forked by a session's thread would
    # get its death signal when that thread ends. on_lasting_thread forks elsewhere.
    code = CHILD.format(setup="", options="watch=False")
    started: list[subprocess.Popen] = []

    def start() -> None:
        child = on_lasting_thread(
            lambda: subprocess.Popen(
                [sys.executable, "-c", code],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
        started.append(child)
        # The thread ends only once the child has asked for its death signal.
        assert child.stdout.readline().strip() == "ready"

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    (child,) = started
    try:
        time.sleep(0.5)  # a death signal from the ended thread would have arrived by now
        assert child.poll() is None, f"the child died with its thread ({child.returncode})"
    finally:
        child.kill()
        child.wait(5)
