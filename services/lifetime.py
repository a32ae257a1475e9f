"""Child processes die with their parent, however the parent dies.

A child calls :func:`die_with_parent` first thing. On Linux it asks the kernel for a signal when
its parent goes (``PR_SET_PDEATHSIG``), which covers a parent killed with SIGKILL, whose own
clean-up never runs. A watcher thread backs that up: it polls ``os.getppid()`` (which changes
when the parent dies and the child is re-parented), sends the same signal and, if the child has
not gone after a grace period, ends it. The watcher covers platforms without ``prctl`` and a
parent that died before the child could ask.

The kernel's "parent" is the *thread* that forked the child: a child started from a thread that
later ends would get its signal then, with the parent process alive. :func:`on_lasting_thread`
runs the start on a thread that lives as long as the process.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# How often the watcher looks at its parent, and how long a child may take to stop after it
# was signalled: together well inside the 5 s in which everything must be gone.
POLL_S = 0.2
GRACE_S = 2.0


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits.

    Returns:
        Whether the kernel accepted it (False on other platforms).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(
    parent_pid: int,
    *,
    sig: int = signal.SIGTERM,
    pdeathsig: bool = True,
    watch: bool = True,
    poll_s: float = POLL_S,
    grace_s: float = GRACE_S,
) -> None:
    """Make this process stop when ``parent_pid`` (the process that started it) dies.

    Args:
        parent_pid: The parent's pid as the parent saw it (``os.getpid()`` before the start).
        sig: The signal that asks this process to stop (SIGTERM: its own clean-up runs).
        pdeathsig: Use Linux's ``PR_SET_PDEATHSIG``.
        watch: Start the watcher thread (polls the parent; ends the process after ``grace_s``).
        poll_s: How often the watcher looks.
        grace_s: How long the process may take to stop once signalled.
    """
    if pdeathsig:
        set_parent_death_signal(sig)
    if watch:
        threading.Thread(
            target=_watch_parent,
            args=(parent_pid, sig, poll_s, grace_s),
            name="parent-watch",
            daemon=True,
        ).start()
    elif os.getppid() != parent_pid:  # gone before the kernel was asked: nobody will signal us
        os.kill(os.getpid(), sig)


def _watch_parent(parent_pid: int, sig: int, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os.kill(os.getpid(), sig)  # harmless if PR_SET_PDEATHSIG sent it already
    time.sleep(grace_s)
    os._exit(128 + sig)  # its clean-up hangs: nobody is left to wait for it


def run_as_child(parent_pid: int, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A ``multiprocessing`` target that first ties the child's life to ``parent_pid``.

    Example::

        Process(target=run_as_child, args=(os.getpid(), serve, config))
    """
    die_with_parent(parent_pid)
    return target(*args, **kwargs)


_spawner: queue.SimpleQueue | None = None
_spawner_thread: threading.Thread | None = None
_spawner_lock = threading.Lock()


def on_lasting_thread(start: Callable[[], T]) -> T:
    """Call ``start`` (which starts a child process) on a thread that lives as long as the process.

    The main thread is one; from any other thread the call goes to a daemon thread kept for
    this, so ``PR_SET_PDEATHSIG`` fires when the process ends, not when the calling thread does.
    Blocks until ``start`` returns and returns what it returned (or raises what it raised).
    """
    current = threading.current_thread()
    if current is threading.main_thread() or current is _spawner_thread:
        return start()
    future: concurrent.futures.Future = concurrent.futures.Future()
    _spawner_queue().put((start, future))
    return future.result()


def _spawner_queue() -> queue.SimpleQueue:
    global _spawner, _spawner_thread
    with _spawner_lock:
        if _spawner is None:
            _spawner = queue.SimpleQueue()
            _spawner_thread = threading.Thread(
                target=_spawn_loop, args=(_spawner,), name="child-starter", daemon=True
            )
            _spawner_thread.start()
        return _spawner


def _spawn_loop(jobs: queue.SimpleQueue) -> None:
    while True:
        start, future = jobs.get()
        try:
            future.set_result(start())
        except BaseException as exc:  # handed to the caller, who re-raises it
            future.set_exception(exc)
