"""Structured events: one per phase transition, proposal, guard verdict, trial start/end,
decision. The loop emits them to every sink; a failing sink is logged and never stops the loop.

Every event is a flat JSON object: ``{"ts": <epoch s>, "run_id": ..., "cycle": N, "kind": ...,
...}``. ``state/events.jsonl`` holds them (when ``observability.emit_events_jsonl``), so a
viewer in another process (``ralph-ml watch``, the dashboard) can follow a run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger("ralph_ml.events")

Event = dict[str, Any]


class Sink(Protocol):
    """Receives every event of a run. Exceptions are caught by the bus."""

    def __call__(self, event: Event) -> None: ...

    def close(self) -> None: ...


class EventLog:
    """Appends events to a JSON-lines file (no fsync: the journal is the durable record)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, event: Event) -> None:
        os.write(self._fd, (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CallbackSink:
    """Adapts an ``on_event(kind, data)`` callback (the CLI's renderers) to a sink."""

    def __init__(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        self.fn = fn

    def __call__(self, event: Event) -> None:
        self.fn(event["kind"], event)

    def close(self) -> None:
        return None


class EventBus:
    def __init__(self, sinks: list[Any] | None = None) -> None:
        self.sinks: list[Any] = list(sinks or [])
        self.run_id = ""
        self.failures: dict[str, str] = {}  # sink name -> first error, shown in status

    def add(self, sink: Any) -> None:
        self.sinks.append(sink)

    def emit(self, kind: str, data: dict[str, Any], *, cycle: int | None = None) -> Event:
        event: Event = {"ts": time.time(), "run_id": self.run_id, "kind": kind}
        if cycle is not None:
            event["cycle"] = cycle
        event.update(data)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception as exc:  # a sink never stops the loop
                name = str(getattr(sink, "name", "") or type(sink).__name__)
                if name not in self.failures:
                    self.failures[name] = f"{type(exc).__name__}: {exc}"
                    log.warning("event sink %s failed on %r (%s); it keeps receiving events", name, kind, exc)
        return event

    def all_failures(self) -> dict[str, str]:
        """Sinks that failed or switched themselves off, and why."""
        out = dict(self.failures)
        for sink in self.sinks:
            why = getattr(sink, "failure", None)
            if isinstance(why, str) and why:
                out[str(getattr(sink, "name", type(sink).__name__))] = why
        return out

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # pragma: no cover - fail soft
                log.warning("closing sink %s failed: %s", type(sink).__name__, exc)


def read_events(path: Path, offset: int = 0) -> tuple[list[Event], int]:
    """Complete events after byte ``offset`` and the offset to read from next time."""
    if not path.exists():
        return [], offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    out: list[Event] = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out, offset + end


def follow(path: Path, poll_s: float = 0.25, stop: Callable[[], bool] | None = None) -> Iterator[Event]:
    """Yield events as they are appended (tail -f), until ``stop()`` says so."""
    offset = 0
    while True:
        events, offset = read_events(path, offset)
        yield from events
        if stop is not None and stop():
            return
        time.sleep(poll_s)
