"""Metric collection after a trial, shared by every executor.

A trial reports metrics in one of two ways:

1. ``metrics.json`` at ``RALPH_METRICS_PATH`` in the seed-000 shape
   ``{"result": {"val_accuracy": 0.9, ...}, "runtime": {...}, ...}`` (the floats under
   ``result`` are the metrics), or a flat ``{"val_accuracy": 0.9}``;
2. otherwise ``name: value`` / ``name=value`` lines on stdout, read with a regular
   expression whose group 1 is the name and group 2 the value (the last value of a name wins).

Non-finite values (``NaN``, ``"nan"``, ``"inf"``) are kept as float nan/inf: deciding what a
NaN target means is the loop's job, not the collector's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# A metric's value as scripts print it: a decimal or scientific number, nan or inf.
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
# `name: value` or `name=value` on a line of its own; the same default as `execution.metrics_pattern`.
DEFAULT_METRICS_PATTERN = rf"^\s*([A-Za-z_][\w./-]*)\s*[:=]\s*({NUMBER})\s*$"

_MAX_METRICS_JSON_BYTES = 64 << 20  # a metrics.json larger than 64 MiB is treated as malformed


@dataclass(frozen=True)
class MetricsReading:
    """What ``read_metrics`` found: the metrics, where they came from, and any problem seen."""

    metrics: dict[str, float] = field(default_factory=dict)
    source: str = "none"  # "metrics.json" | "stdout" | "none"
    note: str = ""  # e.g. why a metrics.json was ignored; empty when nothing went wrong


def to_float(value: Any) -> float | None:
    """A metric value as a float (``"nan"``/``"inf"`` strings included), or None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None  # True is an int in Python, but never a metric
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())  # accepts "nan", "NaN", "inf", "-Infinity", "0.5"
        except ValueError:
            return None
    return None


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        number = to_float(value)
        if number is not None:
            out[str(key)] = number
    return out


def parse_metrics_json(data: Any) -> dict[str, float]:
    """The metrics in a decoded metrics.json: the numbers under ``result``, else the top-level ones.

    Raises ``ValueError`` when the document is not an object.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    result = data.get("result")
    if isinstance(result, dict):
        return _numbers(result)
    return _numbers(data)


def parse_stdout(stdout_log: Path, pattern: str = DEFAULT_METRICS_PATTERN) -> dict[str, float]:
    """Metrics printed as lines of ``stdout_log``, read one line at a time (never the whole file)."""
    rx = re.compile(pattern, re.MULTILINE)
    out: dict[str, float] = {}
    try:
        fh = open(stdout_log, encoding="utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return out
    with fh:
        for line in fh:
            m = rx.search(line.rstrip("\r\n"))
            if m is None:
                continue
            number = to_float(m.group(2))
            if number is not None:
                out.pop(m.group(1), None)  # re-insert so the dict's order is the order last seen
                out[m.group(1)] = number
    return out


def read_metrics(
    metrics_path: Path | None, stdout_log: Path, pattern: str = DEFAULT_METRICS_PATTERN
) -> MetricsReading:
    """metrics.json when it exists and holds at least one number, else the stdout lines."""
    note = ""
    if metrics_path is not None:
        try:
            size = metrics_path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            size = -1
        if size >= 0:
            try:
                if size > _MAX_METRICS_JSON_BYTES:
                    raise ValueError(f"{size} bytes is larger than the {_MAX_METRICS_JSON_BYTES} byte limit")
                with open(metrics_path, encoding="utf-8") as fh:
                    metrics = parse_metrics_json(json.load(fh))
            except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                note = f"ignored malformed {metrics_path}: {exc}; metrics were read from stdout instead"
            else:
                if metrics:
                    return MetricsReading(metrics, "metrics.json")
                note = f"{metrics_path} holds no numeric metrics; metrics were read from stdout instead"
    metrics = parse_stdout(stdout_log, pattern)
    return MetricsReading(metrics, "stdout" if metrics else "none", note)


def collect_metrics(
    metrics_path: Path | None, stdout_log: Path, pattern: str = DEFAULT_METRICS_PATTERN
) -> dict[str, float]:
    """The trial's metrics (see the module docstring); never raises on a malformed metrics.json."""
    return read_metrics(metrics_path, stdout_log, pattern).metrics
