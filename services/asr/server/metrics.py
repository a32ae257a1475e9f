"""Prometheus text exposition (format 0.0.4) of the ASR server and its engine.

Written by hand: a handful of gauges, counters and summaries need no client library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from services.asr.procstat import process_rss_bytes

if TYPE_CHECKING:
    from .server import ASRServer

_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")
QUANTILES = (0.5, 0.9, 0.95, 0.99)


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when empty."""
    data = sorted(values)
    if not data:
        return math.nan
    index = min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))
    return data[index]


def _metric_name(*parts: str) -> str:
    return _NAME_OK.sub("_", "_".join(p for p in parts if p)).lower()


def _fmt(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _label_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def add(self, name: str, kind: str, help_text: str, value: float, **labels: Any) -> None:
        if name not in self._declared:
            self._declared.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
        label_text = ""
        if labels:
            inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            label_text = "{" + inner + "}"
        self.lines.append(f"{name}{label_text} {_fmt(value)}")

    def summary(self, name: str, help_text: str, samples: Iterable[float]) -> None:
        data = list(samples)
        for q in QUANTILES:
            self.add(name, "summary", help_text, quantile(data, q), quantile=q)
        self.lines.append(f"{name}_sum {_fmt(float(sum(data)))}")
        self.lines.append(f"{name}_count {len(data)}")


def _flatten(stats: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested stats dict, keyed by their joined path."""
    flat: dict[str, float] = {}
    for key, value in stats.items():
        name = _metric_name(prefix, str(key))
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, bool):
            flat[name] = float(value)
        elif isinstance(value, int | float) and not (
            isinstance(value, float) and math.isinf(value)
        ):
            flat[name] = float(value)
        elif (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            # A list such as recent batch sizes: expose its last value and its mean.
            flat[f"{name}_last"] = float(value[-1])
            flat[f"{name}_mean"] = float(sum(value) / len(value))
    return flat


# Recent latency samples a front end shares with the others (its own /metrics keeps more).
SHARED_SAMPLES = 512


def front_counters(server: ASRServer, samples: int | None = SHARED_SAMPLES) -> dict[str, Any]:
    """One front end's counters as plain data, to add up with other front ends'.

    Args:
        server: The front end.
        samples: Most recent latency samples to include (None: all that are kept).
    """
    c = server.counters
    keep = slice(-samples if samples else None, None)
    return {
        "live_streams": server.live_streams,
        "max_streams": server.config.max_streams,
        "connections_total": c.connections_total,
        "rejected": dict(c.rejected),
        "closed": dict(c.closed),
        "events": dict(c.events),
        "errors": dict(c.errors),
        "audio_seconds": c.audio_seconds,
        "dropped_partials": c.dropped_partials,
        "partial_latency": list(c.partial_latency)[keep],
        "final_latency": list(c.final_latency)[keep],
        "rss_bytes": process_rss_bytes(),
    }


def _add_up(fronts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for front in fronts:
        for key, value in front.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, {})
                for label, count in value.items():
                    bucket[label] = bucket.get(label, 0) + count
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            else:
                total[key] = total.get(key, 0) + value
    return total


def render_metrics(server: ASRServer, engine_stats: Mapping[str, Any]) -> str:
    """All metrics of the server plus the engine's numeric stats, as Prometheus text.

    With several front ends on one engine process (``--workers``), the server-wide series add
    up every front end's counters, the others' as the engine process last relayed them (at
    most ~1 s old), so a scrape gives the same totals whichever front end answers it.
    """
    engine_stats = dict(engine_stats)
    relayed = engine_stats.pop("front_ends", None) or {}
    own = front_counters(server, samples=None)
    others = [c for front, c in relayed.items() if front != server.config.front_end]
    c = _add_up([own, *others]) if others else own
    w = _Writer()
    w.add("asr_front_ends", "gauge", "Front-end processes counted below.", 1 + len(others))
    w.add("asr_streams_live", "gauge", "Connections holding an engine stream.", c["live_streams"])
    w.add("asr_streams_max", "gauge", "Stream limit of the server.", c["max_streams"])
    w.add(
        "asr_connections_total",
        "counter",
        "WebSocket connections accepted.",
        c["connections_total"],
    )
    for reason, count in sorted(c["rejected"].items()):
        w.add(
            "asr_connections_rejected_total",
            "counter",
            "Connections refused.",
            count,
            reason=reason,
        )
    for code, count in sorted(c["closed"].items()):
        w.add(
            "asr_connections_closed_total",
            "counter",
            "Connections closed, by code.",
            count,
            code=code,
        )
    w.add("asr_audio_seconds_total", "counter", "Audio received (seconds).", c["audio_seconds"])
    for kind, count in sorted(c["events"].items()):
        w.add("asr_events_total", "counter", "Events sent to clients.", count, type=kind)
    for code, count in sorted(c["errors"].items()):
        w.add("asr_errors_total", "counter", "Errors reported to clients.", count, code=code)
    w.add(
        "asr_partials_dropped_total",
        "counter",
        "Partials dropped for slow readers.",
        c["dropped_partials"],
    )
    w.summary(
        "asr_partial_latency_seconds",
        "Engine latency of recent partials (audio complete -> event).",
        c["partial_latency"],
    )
    w.summary(
        "asr_finalize_seconds",
        "Finalize request -> final ready, recent requests.",
        c["final_latency"],
    )
    w.add(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of this process.",
        own["rss_bytes"],
    )
    engine_pid = getattr(server.engine, "pid", None)
    engine_rss = process_rss_bytes(engine_pid) if engine_pid else 0
    if engine_pid:
        w.add(
            "asr_engine_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the engine's own process.",
            engine_rss,
        )
    w.add(
        "asr_server_resident_memory_bytes",
        "gauge",
        "Resident memory of the server: its front ends and engine process together.",
        c["rss_bytes"] + engine_rss,
    )
    for name, value in sorted(_flatten(engine_stats).items()):
        metric = _metric_name("asr_engine", name)
        w.add(metric, "gauge", f"Engine stat {name}.", value)
    return "\n".join(w.lines) + "\n"
