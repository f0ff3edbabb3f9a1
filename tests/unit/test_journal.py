from __future__ import annotations

import json
from pathlib import Path

from ralph_ml.journal import Journal, replay, write_json_atomic
from ralph_ml.records import CycleRecord, Proposal, TrialResult, TrialStatus


def _rec(cycle: int, metric: float | None = 0.5) -> dict:
    r = CycleRecord(cycle=cycle, proposal=Proposal(params={"x": cycle}), result=TrialResult(status=TrialStatus.OK, metrics={"a": 1.0}),
                    metric=metric, kept=True, verdict="kept")
    return r.to_dict()


def test_replay_rebuilds_records_and_in_flight(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.jsonl")
    j.append({"type": "run_started", "run_id": "r1"})
    j.append({"type": "cycle_started", "cycle": 1, "proposal": {"params": {"x": 1}}})
    j.append({"type": "cycle_recorded", "cycle": 1, "record": _rec(1), "elapsed_s": 3.0})
    j.append({"type": "cycle_started", "cycle": 2, "proposal": {"params": {"x": 2}}})
    j.close()
    rp = replay(tmp_path / "j.jsonl")
    assert rp.run["run_id"] == "r1" and [r.cycle for r in rp.records] == [1]
    assert len(rp.in_flight) == 1 and rp.in_flight[0][0] == 2 and rp.in_flight[0][1].params == {"x": 2}
    assert rp.elapsed_s == 3.0


def test_torn_tail_is_dropped_and_truncated_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append({"type": "run_started", "run_id": "r1"})
    j.append({"type": "cycle_recorded", "cycle": 1, "record": _rec(1)})
    j.close()
    with open(path, "ab") as fh:
        fh.write(b'{"type": "cycle_recorded", "cycle": 2, "rec')  # kill -9 mid-write
    assert [r.cycle for r in replay(path).records] == [1]
    j2 = Journal(path)  # resume opens the journal: the torn tail goes
    j2.append({"type": "cycle_recorded", "cycle": 2, "record": _rec(2)})
    j2.close()
    assert [r.cycle for r in replay(path).records] == [1, 2]
    for line in path.read_text().splitlines():
        json.loads(line)


def test_a_cycle_recorded_twice_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    j = Journal(path)
    j.append({"type": "run_started", "run_id": "r"})
    j.append({"type": "cycle_recorded", "cycle": 1, "record": _rec(1, 0.5)})
    j.append({"type": "cycle_recorded", "cycle": 1, "record": _rec(1, 0.9)})
    j.close()
    recs = replay(path).records
    assert len(recs) == 1 and recs[0].metric == 0.5


def test_records_round_trip_with_nan_metrics(tmp_path: Path) -> None:
    r = CycleRecord(cycle=3, proposal=Proposal(params={"lr": 0.1}, patch="--- a\n"),
                    result=TrialResult(status=TrialStatus.FAILED, metrics={"val": float("nan")}),
                    metric=None, kept=False, verdict="failed")
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    back = CycleRecord.from_dict(d)
    assert back.proposal == r.proposal and back.result.status is TrialStatus.FAILED
    assert back.result.metrics["val"] != back.result.metrics["val"]  # nan survives


def test_atomic_json_never_leaves_temp_files(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "s.json", {"a": 1})
    write_json_atomic(tmp_path / "s.json", {"a": 2})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
