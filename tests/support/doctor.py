"""Reading ``voice-agent doctor``'s table back: check name -> (status, fix)."""

from __future__ import annotations

import re

# A row: status, the check's name (padded), its detail; a failure's fix on the next line.
_ROW = re.compile(r"^(ok|FAIL|warn)  (.+?)  +(.*)$")


def doctor_rows(out: str) -> dict[str, tuple[str, str]]:
    """Every row of the table in ``out``: name -> (``ok`` | ``FAIL`` | ``warn``, fix or "")."""
    rows: dict[str, tuple[str, str]] = {}
    last = None
    for line in out.splitlines():
        row = _ROW.match(line)
        if row:
            last = row.group(2).strip()
            rows[last] = (row.group(1), "")
        elif last and line.strip().startswith("fix: "):
            rows[last] = (rows[last][0], line.strip()[len("fix: ") :])
    return rows
