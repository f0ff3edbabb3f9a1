"""The README's agent configuration examples load as written."""

from __future__ import annotations

import re
from pathlib import Path

from ralph_ml.config import load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_agent_section_examples_load(tmp_path: Path) -> None:
    text = README.read_text()
    start = text.index("## LLM and coding agents")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2
    names = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"c{i}" / "ralph.toml"
        path.parent.mkdir()
        path.write_text(block)
        cfg = load_config(path)
        names.append(cfg.agent_name)
    assert names == ["openai", "claude-code"]
    first = load_config(tmp_path / "c0" / "ralph.toml")
    assert first.agents.llm.mode == "hybrid" and first.agents.analysis_model == "openai"
    assert first.path(first.agents.llm.prompts_dir or "") == tmp_path / "c0" / "prompts"
