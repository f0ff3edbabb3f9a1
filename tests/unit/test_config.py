from __future__ import annotations

import json
from pathlib import Path

import pytest

from ralph_ml.config import Config, load_config
from ralph_ml.errors import ConfigError
from ralph_ml.records import Direction, lower_is_better

# The spec's RALPH_ML_CONFIG.json (seed 000, "Configuration File"), verbatim.
SPEC = {
    "project": {"name": "cifar10-classifier", "framework": "pytorch", "task": "image-classification",
                "target_metric": {"name": "test_accuracy", "value": 0.92}},
    "data": {"root": "./data", "train_split": "train", "val_split": "val", "test_split": "test"},
    "safeguards": {"max_cycles": 10, "no_improvement_stop_cycles": 3, "min_improvement_delta": 0.002,
                   "time_limit_per_cycle_minutes": 30, "token_budget_per_cycle": 100000},
    "execution": {"mode": "local", "python": "python", "train_cmd": "python train.py --config config.json",
                  "eval_cmd": "python eval.py --config config.json", "env_capture": True},
    "agents": {"code_model": "opencode", "analysis_model": "opencode", "thinking": "medium"},
    "paths": {"workspace": "./workspace", "runs": "./runs", "reports": "./reports", "state": "./state"},
    "observability": {"logger": "tensorboard", "save_stdout": True, "emit_events_jsonl": True},
}


def test_spec_config_loads_as_written(tmp_path: Path) -> None:
    p = tmp_path / "RALPH_ML_CONFIG.json"
    p.write_text(json.dumps(SPEC))
    cfg = load_config(p)
    assert cfg.target.name == "test_accuracy" and cfg.target.value == 0.92
    assert cfg.target.dir is Direction.MAXIMIZE
    assert cfg.safeguards.no_improvement_stop_cycles == 3 and cfg.safeguards.min_improvement_delta == 0.002
    assert cfg.safeguards.time_limit_per_cycle_minutes == 30 and cfg.safeguards.token_budget_per_cycle == 100000
    assert cfg.execution.eval_cmd == "python eval.py --config config.json"
    assert cfg.path(cfg.paths.workspace) == tmp_path / "workspace"
    assert cfg.path(cfg.paths.state) == tmp_path / "state"
    assert cfg.agent_name == "opencode"


def test_toml_yaml_and_json_load_the_same(tmp_path: Path) -> None:
    toml = tmp_path / "ralph.toml"
    toml.write_text('[project]\ntarget_metric = { name = "val_loss", value = 0.1 }\n[safeguards]\nmax_cycles = 4\n')
    yml = tmp_path / "ralph.yaml"
    yml.write_text("project:\n  target_metric: {name: val_loss, value: 0.1}\nsafeguards:\n  max_cycles: 4\n")
    js = tmp_path / "ralph.json"
    js.write_text(json.dumps({"project": {"target_metric": {"name": "val_loss", "value": 0.1}}, "safeguards": {"max_cycles": 4}}))
    dumps = [load_config(p).model_dump() for p in (toml, yml, js)]
    assert dumps[0] == dumps[1] == dumps[2]
    assert load_config(toml).target.dir is Direction.MINIMIZE  # inferred from the name


def _err(tmp_path: Path, text: str) -> str:
    p = tmp_path / "ralph.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    return str(ei.value)


BASE = '[project]\ntarget_metric = { name = "acc", value = 0.9 }\n'


def test_unknown_key_names_key_value_and_suggestion(tmp_path: Path) -> None:
    msg = _err(tmp_path, BASE + "[safeguards]\nmax_cylces = 3\n")
    assert "safeguards.max_cylces" in msg and "3" in msg and "Did you mean 'safeguards.max_cycles'" in msg


def test_unknown_section_suggests_the_section(tmp_path: Path) -> None:
    msg = _err(tmp_path, BASE + "[safegaurds]\nmax_cycles = 3\n")
    assert "Did you mean 'safeguards'" in msg


def test_unknown_param_key_in_search_space(tmp_path: Path) -> None:
    msg = _err(tmp_path, BASE + '[search_space.lr]\ntype = "float"\nlow = 0.1\nhigh = 1\nlog_scale = true\n')
    assert "search_space.lr.log_scale" in msg and "Did you mean 'search_space.lr.log'" in msg


def test_wrong_type_and_impossible_values(tmp_path: Path) -> None:
    msg = _err(tmp_path, BASE + '[safeguards]\nmax_cycles = "ten"\ntime_limit_per_cycle_minutes = 0\n')
    assert "safeguards.max_cycles" in msg and "'ten'" in msg
    assert "safeguards.time_limit_per_cycle_minutes" in msg and "greater than 0" in msg


@pytest.mark.parametrize(
    "param, needle",
    [
        ('type = "float"\nlow = 1\nhigh = 0.1', "low (1) must be less than high (0.1)"),
        ('type = "float"\nlow = 0\nhigh = 1\nlog = true', "log-scale parameter needs low > 0"),
        ('type = "categorical"\nchoices = []', "non-empty `choices`"),
        ('type = "int"\nlow = 1\nhigh = 8\ndefault = 9', "default 9 is outside [1, 8]"),
        ('type = "categorical"\nchoices = [16, 32]\ndefault = 64', "not one of choices"),
    ],
)
def test_search_space_checks(tmp_path: Path, param: str, needle: str) -> None:
    assert needle in _err(tmp_path, BASE + "[search_space.p]\n" + param + "\n")


def test_missing_target_is_reported(tmp_path: Path) -> None:
    msg = _err(tmp_path, "[project]\nname = 'x'\n")
    assert "missing required key 'project.target_metric'" in msg


def test_bad_syntax_names_the_file(tmp_path: Path) -> None:
    msg = _err(tmp_path, "[project\n")
    assert "ralph.toml is not valid TOML" in msg


def test_no_config_file_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="ralph-ml init"):
        load_config()


@pytest.mark.parametrize("name, lower", [
    ("val_loss", True), ("val_rmse", True), ("test_wer", True), ("ppl", True), ("val_mape", True), ("fid", True),
    ("val_accuracy", False), ("f1", False), ("auc", False), ("map", False), ("val_precision", False),
])
def test_the_direction_guessed_from_a_metric_name(name: str, lower: bool) -> None:
    """One guess for the target, the pruner's metric and the analysis (set a direction to be sure)."""
    assert lower_is_better(name) is lower
    direction = Config.model_validate({"project": {"target_metric": {"name": name, "value": 0.5}}}).target.dir
    assert (direction is Direction.MINIMIZE) is lower


def test_gpu_ids_are_indices_or_uuids_as_cuda_visible_devices_takes_them() -> None:
    from ralph_ml.resources import ResourcePool, parse_visible_devices

    assert parse_visible_devices("0,2") == [0, 2]
    assert parse_visible_devices("GPU-8f2a, MIG-1c3d/1/0") == ["GPU-8f2a", "MIG-1c3d/1/0"]
    assert parse_visible_devices("1,-1,2") == [1]  # CUDA stops at an invalid entry
    assert parse_visible_devices("") == []
    ex = Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 1}},
                                "execution": {"gpus": ["MIG-a", "MIG-b"], "max_concurrency": 2}}).execution
    pool = ResourcePool.for_concurrency(list(ex.gpus), ex.gpus_per_trial, None, 2)
    first, second = pool.allocate(1), pool.allocate(2)
    assert first.env(True)["CUDA_VISIBLE_DEVICES"] == "MIG-a" and second.env(True)["CUDA_VISIBLE_DEVICES"] == "MIG-b"
    from ralph_ml.errors import ExecutorError

    with pytest.raises(ExecutorError, match="cycle 1 already holds"):
        pool.allocate(1)  # would lose MIG-a for the rest of the run
    pool.release(1)
    pool.release(1)  # idempotent
    assert pool.allocate(3).gpus == ("MIG-a",)
    with pytest.raises(ValueError, match="not GPU ids"):
        Config.model_validate({"project": {"target_metric": {"name": "acc", "value": 1}}, "execution": {"gpus": ["cuda:0"]}})


def test_gpu_detection_says_so_when_nvidia_smi_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from ralph_ml.resources import detect_gpus

    fake = tmp_path / "nvidia-smi"  # the driver's tool, at the outermost boundary: a script on PATH
    fake.write_text("#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch' >&2\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with caplog.at_level("WARNING", logger="ralph_ml.resources"):
        assert detect_gpus() == []
    assert "exit code 9" in caplog.text and "version mismatch" in caplog.text and "execution.gpus" in caplog.text
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-2)'\n")
    assert detect_gpus() == [0, 1]
