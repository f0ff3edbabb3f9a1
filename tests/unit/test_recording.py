from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from ralph_ml.recording import write_run_env


def test_run_env_names_python_platform_and_every_installed_package_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "state" / "env.json"
    path.parent.mkdir()
    write_run_env(path)
    env = json.loads(path.read_text())
    assert env["python"] == sys.version and env["executable"] == sys.executable
    assert env["platform"] == platform.platform()
    pkgs = env["packages"]
    assert pkgs == sorted(pkgs) and all(p.count("==") == 1 for p in pkgs)
    for name in ("pydantic", "optuna", "ralph-ml"):
        assert f"{metadata.metadata(name)['Name']}=={metadata.version(name)}" in pkgs
    assert len(pkgs) == sum(1 for d in metadata.distributions() if d.metadata["Name"])  # one per distribution found


def test_run_env_reads_each_name_and_version_as_the_metadata_parser_does() -> None:
    """The header scan agrees with importlib.metadata's full parse for every installed distribution."""
    from ralph_ml.recording import _name_version

    dists = list(metadata.distributions())
    assert len(dists) > 20
    for d in dists:
        md = d.metadata
        assert _name_version(d) == ((md["Name"] or None), md["Version"]), d._path  # type: ignore[attr-defined]
