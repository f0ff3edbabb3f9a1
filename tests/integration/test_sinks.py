"""Tracking sinks against the real libraries: the loop runs, then MLflow's sqlite store, the
TensorBoard event files and the W&B offline run are read back and compared with the journal."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import journal_events, make_experiment, ralph, recorded

TRAIN = """
import pathlib
from ralph_ml import trial
x = trial.params({"x": 0.1})["x"]
acc = 1 - (x - 0.7) ** 2
for step in range(1, 6):
    trial.report(step, val_accuracy=acc * step / 5, train_loss=1.0 / step)
(pathlib.Path(trial.checkpoint_dir()) / "model.pt").write_text(f"weights for x={x}")
trial.log_metrics(val_accuracy=acc, train_loss=0.123)
"""

ALL = ["mlflow", "tensorboard", "wandb"]


def _exp(root: Path, loggers: list[str], max_cycles: int, **obs: Any) -> Path:
    return make_experiment(
        root, TRAIN, target=1.5,
        safeguards={"max_cycles": max_cycles, "no_improvement_stop_cycles": 20},
        extra={"observability": {"logger": loggers, **obs}},
    )


def _set(root: Path, old: str, new: str) -> None:
    path = root / "ralph.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _exp(tmp_path_factory.mktemp("sinks") / "exp", ALL, 4)
    proc = ralph(root, "start", timeout=240)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # max_cycles
    assert "logging is off" not in proc.stdout + proc.stderr
    return root


def _client(root: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/state/mlflow.db", registry_uri=f"sqlite:///{root}/state/mlflow.db")


def _runs(root: Path) -> tuple[Any, list[Any], list[Any]]:
    c = _client(root)
    exp = c.get_experiment_by_name("t")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`ralph.kind` = 'run'")
    children = c.search_runs([exp.experiment_id], filter_string="tags.`ralph.kind` = 'cycle'")
    return c, parents, children


def _run_id(root: Path) -> str:
    return str(next(e for e in journal_events(root) if e["type"] == "run_started")["run_id"])


def test_mlflow_has_one_parent_and_one_nested_run_per_recorded_cycle(run: Path) -> None:
    c, parents, children = _runs(run)
    recs = recorded(run)
    assert len(recs) == 4
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["ralph.run_id"] == _run_id(run)
    assert parent.info.status == "FINISHED" and parent.data.tags["ralph.stop_reason"] == "max_cycles"
    assert parent.data.tags["ralph.exit_code"] == "2"
    assert {ch.data.tags["mlflow.parentRunId"] for ch in children} == {parent.info.run_id}
    by_cycle = {int(ch.data.tags["ralph.cycle"]): ch for ch in children}
    assert sorted(by_cycle) == [r["cycle"] for r in recs]
    for r in recs:
        ch = by_cycle[r["cycle"]]
        assert ch.data.tags["verdict"] == r["verdict"] and ch.data.tags["status"] == r["result"]["status"]
        assert ch.data.tags["kept"] == str(r["kept"]).lower()
        assert ch.data.metrics["val_accuracy"] == pytest.approx(r["metric"])
        params = json.loads((run / "runs" / f"cycle_{r['cycle']:04d}" / "params.json").read_text())
        assert ch.data.params["x"] == str(params["x"])
        # the learning curve from progress.jsonl, then the final value as the latest point
        hist = c.get_metric_history(ch.info.run_id, "train_loss")
        assert [m.step for m in hist if m.value != 0.123] == [1, 2, 3, 4, 5]
        arts = {a.path for a in c.list_artifacts(ch.info.run_id)}
        assert {"metrics.json", "analysis.md", "decision.json", "params.json"} <= arts
    # the parent's curve over cycles: one point per cycle with a metric
    curve = c.get_metric_history(parent.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in curve) == sorted((r["cycle"], pytest.approx(r["metric"])) for r in recs)


def test_mlflow_registers_kept_checkpoints_and_the_champion_is_the_best_cycle(run: Path, tmp_path: Path) -> None:
    c, _, children = _runs(run)
    recs = recorded(run)
    kept = [r for r in recs if r["kept"]]
    best = kept[-1]
    versions = c.search_model_versions("name='t'")
    assert sorted(int(v.tags["ralph.cycle"]) for v in versions) == [r["cycle"] for r in kept]
    champion = c.get_model_version_by_alias("t", "champion")
    assert champion.tags["ralph.cycle"] == str(best["cycle"])
    by_cycle = {int(ch.data.tags["ralph.cycle"]): ch.info.run_id for ch in children}
    assert champion.run_id == by_cycle[best["cycle"]]
    local = c.download_artifacts(champion.run_id, "checkpoints/model.pt", str(tmp_path))
    expected = (run / "runs" / f"cycle_{best['cycle']:04d}" / "checkpoints" / "model.pt").read_text()
    assert Path(local).read_text() == expected


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_per_cycle_and_per_step_scalars(run: Path) -> None:
    recs = recorded(run)
    scalars = _scalars(run / "runs" / "tensorboard" / _run_id(run))
    assert scalars["cycles/val_accuracy"] == [(r["cycle"], pytest.approx(r["metric"], rel=1e-6)) for r in recs]
    assert [s for s, _ in scalars["cycles/train_loss"]] == [r["cycle"] for r in recs]
    best = [max(r["metric"] for r in recs[: i + 1] if r["kept"]) for i in range(len(recs))]
    assert [v for _, v in scalars["cycles/best_val_accuracy"]] == [pytest.approx(b, rel=1e-6) for b in best]
    for r in recs:
        rows = [json.loads(line) for line in (run / "runs" / f"cycle_{r['cycle']:04d}" / "progress.jsonl").read_text().splitlines()]
        assert scalars[f"cycle_{r['cycle']:04d}/val_accuracy"] == [(row["step"], pytest.approx(row["val_accuracy"], rel=1e-6)) for row in rows]


def _wandb_records(path: Path) -> Iterator[Any]:
    """Records of a W&B ``.wandb`` file (LevelDB-style log: 32 KiB blocks of chunked records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 2):  # full, first
            buf = chunk
        else:  # middle, last
            buf += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def test_wandb_offline_run_holds_one_row_per_cycle(run: Path) -> None:
    recs = recorded(run)
    files = glob.glob(str(run / "state" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    rows, run_rec = [], None
    for rec in _wandb_records(Path(files[0])):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_rec = rec.run
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
    assert run_rec is not None and run_rec.display_name == _run_id(run) and run_rec.project == "t"
    per_cycle = [r for r in rows if "cycle" in r]
    assert [r["cycle"] for r in per_cycle] == [r["cycle"] for r in recs]
    assert [r["cycles/val_accuracy"] for r in per_cycle] == [pytest.approx(r["metric"]) for r in recs]
    steps = [r["cycle_0001/step"] for r in rows if "cycle_0001/step" in r]
    assert steps == [1, 2, 3, 4, 5]


def test_resume_reuses_the_parent_run_and_logs_the_cycles_it_missed(tmp_path: Path) -> None:
    # In-process loops (the CLI's own code path: Loop.start / Loop.resume, then run).
    from ralph_ml.config import load_config
    from ralph_ml.loop import Loop

    root = _exp(tmp_path / "exp", [], 2)
    assert Loop.start(load_config(root / "ralph.toml")).run().exit_code == 2
    # Tracking switched on for the resumed run: the two earlier cycles are caught up from the journal.
    _set(root, "max_cycles = 2", "max_cycles = 3")
    _set(root, "logger = []", 'logger = ["mlflow", "tensorboard"]')
    loop = Loop.resume(load_config(root / "ralph.toml"))
    assert loop.run().exit_code == 2 and not loop.bus.failures, loop.bus.failures
    _set(root, "max_cycles = 3", "max_cycles = 4")
    loop = Loop.resume(load_config(root / "ralph.toml"))
    assert loop.run().exit_code == 2 and not loop.bus.failures, loop.bus.failures
    recs = recorded(root)
    assert len(recs) == 4
    _, parents, children = _runs(root)
    assert len(parents) == 1 and parents[0].data.tags["ralph.sessions"] == "2"
    assert sorted(int(ch.data.tags["ralph.cycle"]) for ch in children) == [1, 2, 3, 4]
    assert {ch.data.tags["mlflow.parentRunId"] for ch in children} == {parents[0].info.run_id}
    scalars = _scalars(root / "runs" / "tensorboard" / _run_id(root))
    assert [s for s, _ in scalars["cycles/val_accuracy"]] == [1, 2, 3, 4]


def test_a_broken_tracker_never_stops_the_loop(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    root.mkdir()
    (root / "blocker").write_text("a file where the trackers expect a folder\n")
    _exp(root, ["mlflow", "tensorboard"], 3, mlflow={"tracking_uri": "sqlite:///blocker/mlflow.db"},
         tensorboard={"log_dir": "blocker/tb"})
    proc = ralph(root, "start", timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # max_cycles, as without trackers
    assert [r["cycle"] for r in recorded(root)] == [1, 2, 3]
    assert "mlflow logging is off for this run" in out and "tensorboard logging is off for this run" in out
    assert (root / "reports" / "final_report.md").exists()
    state = json.loads(ralph(root, "status", "--json").stdout)
    assert set(state["sink_failures"]) == {"mlflow", "tensorboard"}
    assert "sink mlflow" in ralph(root, "status").stdout


def test_a_missing_extra_is_named_with_its_install_command_and_the_run_goes_on(tmp_path: Path) -> None:
    root = _exp(tmp_path / "exp", ["wandb"], 2)
    # The interpreter as if wandb were not installed (sys.modules[name] = None hides a package).
    code = "import sys; sys.modules['wandb'] = None; sys.argv = ['ralph-ml', 'start']; from ralph_ml.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "observability.logger includes 'wandb' but wandb is not installed: pip install 'ralph-ml[wandb]'" in out
    assert len(recorded(root)) == 2
    assert not (root / "state" / "wandb").exists()


def test_logger_takes_one_name_or_a_list_and_names_a_typo(tmp_path: Path) -> None:
    from ralph_ml.config import load_config
    from ralph_ml.errors import ConfigError

    for value, expected in (('"tensorboard"', ["tensorboard"]), ('"none"', []), ('["mlflow", "WandB"]', ["mlflow", "wandb"])):
        path = tmp_path / "ralph.toml"
        path.write_text(f'[project]\ntarget_metric = {{ name = "acc", value = 0.9 }}\n[observability]\nlogger = {value}\n')
        assert load_config(path).observability.logger == expected
    path.write_text('[project]\ntarget_metric = { name = "acc", value = 0.9 }\n[observability]\nlogger = ["mlfow"]\n')
    with pytest.raises(ConfigError, match=r"observability.logger' = \['mlfow'\]: unknown logger 'mlfow'; choose among "
                                          r"none, stdout, tensorboard, mlflow, wandb. Did you mean 'mlflow'\?"):
        load_config(path)
