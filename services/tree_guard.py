"""A guardian that ends a process's whole tree when that process dies, SIGKILL included.

``services/lifetime.py`` covers children we start ourselves. Ray starts its own tree under the
driver (GCS, raylet, agents, workers, HAProxy), and a driver killed with SIGKILL left some of it
running here: the raylet's agents, and an HAProxy that Serve respawned while its replica died.
The guardian is a small child process: every ``poll_s`` it notes the descendants of its parent
(pid and start time, so a reused pid is never hit); once the parent is gone it sends SIGTERM to
them and to any children they have by then, and SIGKILL to what is left after ``grace_s``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 2.0

Proc = tuple[int, str]  # (pid, start time in clock ticks: /proc/PID/stat field 22)


def start_tree_guard(*, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> subprocess.Popen:
    """Start the guardian of this process's tree (Linux; elsewhere it exits at once)."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.tree_guard", str(os.getpid()), str(poll_s), str(grace_s)],
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live process (zombies are gone already).

    Raw ``os.read`` of each ``/proc/PID/stat``: the guardian scans every process twice a second
    for the life of a cluster, and ``Path.read_text`` made that ~2.5% of a core on its own.
    """
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                stat = os.read(fd, 4096)
            finally:
                os.close(fd)
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
        if fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), fields[19].decode())
    return table


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[Proc]:
    found: set[Proc] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier}
        frontier -= {pid for pid, _ in found}
        found |= {(pid, table[pid][1]) for pid in frontier}
    return found


def _alive(procs: set[Proc], table: dict[int, tuple[int, str]] | None = None) -> set[Proc]:
    table = _table() if table is None else table
    return {(pid, start) for pid, start in procs if table.get(pid, (0, ""))[1] == start}


def _signal(procs: set[Proc], sig: int) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def end_tree(*, grace_s: float = GRACE_S, spare: tuple[int, ...] = ()) -> tuple[int, list[str]]:
    """End every descendant of this process at once: SIGTERM, SIGKILL after ``grace_s``.

    All at once, so a tree of daemons stops in one grace period rather than one after another.
    ``spare``: pids left alone (the guardian).

    Returns:
        How many processes were signalled, and the names of those that needed SIGKILL.
    """
    table = _table()
    victims = {p for p in _descendants({os.getpid()}, table) if p[0] not in spare}
    count = len(victims)
    _signal(victims, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while victims and time.monotonic() < deadline:
        time.sleep(0.05)
        victims = _alive(victims)
    stubborn = [_name(pid) for pid, _ in victims]
    _signal(victims, signal.SIGKILL)
    return count, stubborn


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode()
    except OSError:
        return str(pid)


def guard(parent: int, *, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """Watch ``parent``; when it is gone, end every process it had below it."""
    me = os.getpid()
    known: set[Proc] = set()
    while os.getppid() == parent:
        table = _table()
        known = {p for p in _descendants({parent}, table) if p[0] != me} | _alive(known, table)
        time.sleep(poll_s)
    # Orphans are re-parented, not renamed: what is still alive of the tree, and its children.
    victims = _alive(known)
    victims |= _descendants({pid for pid, _ in victims}, _table())
    _signal(victims, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while victims and time.monotonic() < deadline:
        time.sleep(0.05)
        victims = _alive(victims)
    _signal(victims, signal.SIGKILL)


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group: the guardian stays to clean up after its parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not Path("/proc/self/stat").exists():
        return 0
    guard(int(argv[0]), poll_s=float(argv[1]), grace_s=float(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
