"""reports/timeline.json: Chrome trace spans built from the event stream, for sequential and
parallel cycles and for a run that crashed and was resumed."""

from __future__ import annotations

from typing import Any

from ralph_ml.timeline import build_trace


def ev(ts: float, kind: str, cycle: int | None = None, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"ts": ts, "run_id": "r", "kind": kind, **kw}
    if cycle is not None:
        e["cycle"] = cycle
    return e


def spans(trace: dict[str, Any], cat: str) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["cat"] == cat]


def names(trace: dict[str, Any], what: str) -> dict[tuple[int, int | None], str]:
    return {(e["pid"], e.get("tid")): e["args"]["name"] for e in trace["traceEvents"] if e.get("ph") == "M" and e["name"] == what}


def test_parallel_cycles_get_their_own_lanes_and_the_loop_phases_one_row() -> None:
    events = [
        ev(0.0, "run_started", resumed=False),
        ev(0.0, "phase", 1, phase="propose"), ev(0.1, "phase", 1, phase="materialize"),
        ev(0.2, "trial_started", 1), ev(0.2, "phase", 1, phase="execute"),
        ev(0.3, "phase", 2, phase="propose"), ev(0.4, "phase", 2, phase="materialize"),
        ev(0.5, "trial_started", 2), ev(0.5, "phase", 2, phase="execute"),
        ev(2.0, "trial_ended", 1, status="ok"), ev(2.0, "phase", 1, phase="analyze"), ev(2.1, "phase", 1, phase="decide"),
        ev(2.2, "cycle_recorded", 1, verdict="kept", metric=0.5, status="ok"),
        ev(2.3, "phase", 3, phase="propose"), ev(2.4, "trial_started", 3),
        ev(3.0, "trial_ended", 2, status="failed"), ev(3.0, "phase", 2, phase="analyze"),
        ev(3.1, "cycle_recorded", 2, verdict="failed", status="failed"),
        ev(4.0, "trial_ended", 3, status="ok"), ev(4.1, "cycle_recorded", 3, verdict="discarded"),
        ev(4.2, "run_stopped", decision={"reason": "max_cycles"}, exit_code=2),
    ]
    trace = build_trace(events)
    cycles = {e["name"]: e for e in spans(trace, "cycle")}
    assert cycles["cycle 1"]["ts"] == 0 and cycles["cycle 1"]["dur"] == 2_200_000
    lanes = {n: cycles[n]["tid"] for n in cycles}
    assert lanes["cycle 1"] != lanes["cycle 2"]  # in flight together
    assert lanes["cycle 3"] == lanes["cycle 1"]  # lane 1 was free again
    trials = {e["args"]["cycle"]: e for e in spans(trace, "trial")}
    assert trials[2]["tid"] == lanes["cycle 2"] and trials[2]["dur"] == 2_500_000 and trials[2]["args"]["status"] == "failed"
    phases = spans(trace, "phase")
    assert {e["tid"] for e in phases} == {1}
    assert [(e["name"], e["args"]["cycle"]) for e in phases] == [
        ("propose", 1), ("materialize", 1), ("execute", 1), ("propose", 2), ("materialize", 2), ("execute", 2),
        ("analyze", 1), ("decide", 1), ("propose", 3), ("analyze", 2),
    ]
    assert phases[2]["dur"] == 100_000  # execute of cycle 1 ends when the loop turns to cycle 2
    assert phases[-1]["dur"] == 100_000  # analyze of cycle 2 ends when cycle 2 is recorded
    assert names(trace, "thread_name")[(1, lanes["cycle 2"])] == "cycles (lane 2)"
    stop = [e for e in trace["traceEvents"] if e["name"] == "run_stopped"]
    assert stop[0]["ph"] == "i" and stop[0]["args"]["reason"] == "max_cycles"


def test_a_crashed_session_ends_at_its_last_event_and_the_resume_is_a_new_row() -> None:
    events = [
        ev(0.0, "run_started", resumed=False),
        ev(0.0, "phase", 1, phase="propose"), ev(0.1, "phase", 1, phase="execute"), ev(0.1, "trial_started", 1),
        ev(1.0, "cycle_recorded", 1, verdict="kept"),
        ev(1.1, "phase", 2, phase="propose"), ev(1.2, "phase", 2, phase="execute"), ev(1.2, "trial_started", 2),
        # kill -9 here; resumed 100 s later
        ev(101.0, "run_started", resumed=True),
        ev(101.0, "cycle_started", 2, recovering=True), ev(101.1, "phase", 2, phase="execute"),
        ev(101.2, "trial_started", 2), ev(102.0, "trial_ended", 2, status="ok"),
        ev(102.1, "cycle_recorded", 2, verdict="discarded"),
    ]
    trace = build_trace(events, stopped={"ts": 102.2, "decision": {"reason": "plateau"}, "exit_code": 3})
    sessions = names(trace, "process_name")
    assert sessions == {(1, None): "session 1: start r", (2, None): "session 2: resume r"}
    cycles = [(e["pid"], e["name"], e["ts"], e["dur"]) for e in spans(trace, "cycle")]
    assert cycles == [
        (1, "cycle 1", 0, 1_000_000),
        (1, "cycle 2 (interrupted)", 1_100_000, 100_000),  # ends with the session's last event, not at the resume
        (2, "cycle 2", 101_000_000, 1_100_000),
    ]
    trials = [(e["pid"], e["name"]) for e in spans(trace, "trial")]
    assert trials == [(1, "trial 1"), (1, "trial 2 (interrupted)"), (2, "trial 2")]  # trial 1: closed by its record
    assert [e["pid"] for e in spans(trace, "phase") if e["name"] == "execute" and e["args"]["cycle"] == 2] == [1, 2]
    # the journal's stop closes the run (the loop writes the trace before emitting its own run_stopped)
    assert [(e["pid"], e["args"]["reason"]) for e in trace["traceEvents"] if e["name"] == "run_stopped"] == [(2, "plateau")]


def test_no_events_is_an_empty_trace() -> None:
    assert build_trace([])["traceEvents"] == []
