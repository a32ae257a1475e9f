"""CPU time of a process tree over a stretch of wall time, by process (Linux ``/proc``).

Load tests on shared cores measure capacity (the largest N with no drift), which moves by tens
of percent from one search to the next. CPU time spent per stream at a fixed N is steadier and
says where the time goes: which process of a server (front end, engine, HAProxy, Ray's daemons)
costs what. Used by ``loadtest_ray.py --cpu-at``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcTimes:
    """One process at one moment: its label and CPU seconds (user + system) so far."""

    label: str
    cpu_s: float


def _stat_fields(pid: int) -> tuple[str, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The name is in parentheses and may itself hold spaces or parentheses.
    close = stat.rfind(")")
    return stat[stat.find("(") + 1 : close], stat[close + 2 :].split()


def _all_stats() -> dict[int, tuple[str, list[str]]]:
    """Every process's name and ``/proc/PID/stat`` fields now (one walk of ``/proc``)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parsed = _stat_fields(int(entry))
            if parsed is not None:  # None: ended meanwhile
                found[int(entry)] = parsed
    return found


def _tree(root: int, stats: dict[int, tuple[str, list[str]]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (_, fields) in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, by parent pid (a snapshot of ``/proc``)."""
    return _tree(root, _all_stats())


def label_of(pid: int, name: str) -> str:
    """A readable label: the process name, with Python's multiprocessing children told apart."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if "multiprocessing.spawn" in cmdline or "multiprocessing.forkserver" in cmdline:
        return f"{name} (multiprocessing child)"
    if "multiprocessing.resource_tracker" in cmdline:
        return f"{name} (resource tracker)"
    return name


def snapshot(root: int) -> dict[int, ProcTimes]:
    """CPU seconds of every process in ``root``'s tree now."""
    stats = _all_stats()
    found = {}
    for pid in _tree(root, stats):
        if pid not in stats:
            continue  # the root itself has ended
        name, fields = stats[pid]
        # utime and stime are fields 14 and 15 of /proc/PID/stat (11, 12 after the name).
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        found[pid] = ProcTimes(label_of(pid, name), seconds)
    return found


def host_busy_s() -> float:
    """CPU seconds the whole host has been busy (all cores, not idle or waiting on I/O)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / _TICKS


@dataclass
class CpuWindow:
    """CPU use of a process tree (and of the host, and of this process) between two moments."""

    root: int
    _start: tuple[float, dict[int, ProcTimes], float, float] | None = None
    result: dict = field(default_factory=dict)

    def start(self) -> None:
        own = os.times()
        self._start = (
            time.perf_counter(),
            snapshot(self.root),
            host_busy_s(),
            own.user + own.system,
        )

    def stop(self) -> dict:
        """Cores used per label (CPU seconds over wall seconds), the tree's total, the host's."""
        if self._start is None:
            raise RuntimeError("CpuWindow.stop() before start()")
        t0, before, host0, own0 = self._start
        after = snapshot(self.root)
        own = os.times()
        wall = max(1e-9, time.perf_counter() - t0)
        self.result = summarize(before, after, wall)
        self.result["host_busy_cores"] = round((host_busy_s() - host0) / wall, 3)
        self.result["this_process_cores"] = round((own.user + own.system - own0) / wall, 3)
        return self.result


def summarize(before: dict[int, ProcTimes], after: dict[int, ProcTimes], wall_s: float) -> dict:
    """Cores per label between two snapshots; a process started meanwhile counts from zero.

    A process that ended meanwhile is not counted (its time went to its parent's children's
    times once reaped): measure over a stretch where the server's processes live throughout.
    """
    by_label: dict[str, float] = {}
    for pid, now in after.items():
        then = before.get(pid)
        used = now.cpu_s - (then.cpu_s if then is not None else 0.0)
        by_label[now.label] = by_label.get(now.label, 0.0) + max(0.0, used)
    cores = {k: round(v / wall_s, 3) for k, v in sorted(by_label.items(), key=lambda kv: -kv[1])}
    return {
        "wall_s": round(wall_s, 2),
        "tree_cores": round(sum(by_label.values()) / wall_s, 3),
        "cores_by_process": {k: v for k, v in cores.items() if v >= 0.001},
    }
