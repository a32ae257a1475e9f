"""Memory of a process, for the ASR server's metrics (Linux ``/proc``)."""

from __future__ import annotations

import os


def process_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of ``pid`` (this process if None); 0 where ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
