"""The chat client against a local OpenAI-compatible server, with the real `openai` client."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_llm_server import FakeLLM, Reply, error, ok

from ralph_ml.agents.budget import make_budget
from ralph_ml.agents.llm_client import ChatClient, Transcript
from ralph_ml.config import LLMAgent
from ralph_ml.errors import AgentError

MSGS = [{"role": "user", "content": "Answer in JSON."}]
SCHEMA: dict[str, Any] = {"type": "object"}


def _client(url: str, **kw: Any) -> ChatClient:
    return ChatClient(LLMAgent(base_url=url, api_key_env="", retry_backoff_s=0.01, timeout_s=5, **kw))


def _complete(c: ChatClient, tmp_path: Path, max_tokens: int = 100) -> Any:
    return c.complete(MSGS, schema=SCHEMA, name="t", max_tokens=max_tokens, transcript=Transcript(tmp_path / "t.jsonl"))


def test_json_object_refused_too_falls_back_to_plain_text_and_stays_there(tmp_path: Path) -> None:
    script = [error(400, "Unknown field response_format"), error(422, "json_object response format unsupported"),
              ok("fine"), ok("again")]
    with FakeLLM(script) as srv:
        c = _client(srv.url)
        assert _complete(c, tmp_path).text == "fine"
        assert _complete(c, tmp_path).text == "again"
        kinds = [r["body"].get("response_format", {}).get("type") for r in srv.requests]
    assert kinds == ["json_schema", "json_object", None, None] and c.level == "text"


def test_max_completion_tokens_is_used_when_the_server_asks_for_it(tmp_path: Path) -> None:
    script = [error(400, "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."), ok("x")]
    with FakeLLM(script) as srv:
        _complete(_client(srv.url), tmp_path, max_tokens=77)
        bodies = [r["body"] for r in srv.requests]
    assert bodies[0]["max_tokens"] == 77 and bodies[1]["max_completion_tokens"] == 77 and "max_tokens" not in bodies[1]


def test_5xx_retries_are_bounded_and_the_error_says_what_to_check(tmp_path: Path) -> None:
    with FakeLLM([error(503, "overloaded")] * 3) as srv:
        with pytest.raises(AgentError) as ei:
            _complete(_client(srv.url, max_retries=2), tmp_path)
        assert len(srv.requests) == 3
    msg = str(ei.value)
    assert "HTTP 503 after 3 attempt(s)" in msg and "max_retries = 2" in msg and "t.jsonl" in msg


def test_a_401_is_not_retried(tmp_path: Path) -> None:
    with FakeLLM([error(401, "bad key")]) as srv:
        with pytest.raises(AgentError) as ei:
            _complete(_client(srv.url), tmp_path)
        assert len(srv.requests) == 1
    assert "HTTP 401" in str(ei.value) and "api_key_env" in str(ei.value)


def test_retry_after_is_honoured_and_capped(tmp_path: Path) -> None:
    with FakeLLM([error(429, "slow", headers={"retry-after": "0.4"}), ok("x")]) as srv:
        t0 = time.monotonic()
        _complete(_client(srv.url), tmp_path)
        assert time.monotonic() - t0 >= 0.4
    with FakeLLM([error(429, "slow", headers={"retry-after": "30"}), ok("x")]) as srv:
        t0 = time.monotonic()
        _complete(_client(srv.url, retry_max_wait_s=0.1), tmp_path)
        assert time.monotonic() - t0 < 5


def test_missing_usage_is_estimated_from_characters(tmp_path: Path) -> None:
    with FakeLLM([Reply(content="x" * 300, usage=None)]) as srv:
        res = _complete(_client(srv.url), tmp_path)
    assert res.estimated and res.completion_tokens == 101 and res.prompt_tokens > 0


def test_converse_corrects_and_counts_every_token(tmp_path: Path) -> None:
    def validate(d: dict[str, Any]) -> int:
        if d.get("n") != 3:
            from ralph_ml.agents._text import ReplyInvalid

            raise ReplyInvalid(f"n must be 3, got {d.get('n')}")
        return 3

    budget = make_budget(max_tokens=500, tokens_left=None, tokens_left_cycle=None, cost_left_usd=None,
                         price_per_1k_input=1.0, price_per_1k_output=2.0)
    with FakeLLM([ok({"n": 1}), ok({"n": 3}, usage=(200, 10))]) as srv:
        c = _client(srv.url, price_per_1k_input=1.0, price_per_1k_output=2.0)
        value, tokens, cost = c.converse(MSGS, schema=SCHEMA, name="t", validate=validate, budget=budget,
                                         transcript=Transcript(None))
        assert "n must be 3, got 1" in srv.user_prompts()[1]
    assert value == 3 and tokens == 120 + 210 and cost == pytest.approx(0.3 * 1.0 + 0.03 * 2.0)


def test_no_call_is_made_when_the_budget_cannot_pay_and_the_loop_is_told_to_stop(tmp_path: Path) -> None:
    budget = make_budget(max_tokens=500, tokens_left=10, tokens_left_cycle=None, cost_left_usd=None,
                         price_per_1k_input=0, price_per_1k_output=0)
    with FakeLLM([ok("x")]) as srv:
        with pytest.raises(AgentError) as ei:
            _client(srv.url).converse(MSGS, schema=SCHEMA, name="t", validate=lambda d: d, budget=budget,
                                      transcript=Transcript(None))
        assert srv.requests == []
    assert ei.value.meta["budget_stop"] == "tokens" and "token_budget_total leaves 10 tokens" in str(ei.value)
    cost_budget = make_budget(max_tokens=500, tokens_left=None, tokens_left_cycle=None, cost_left_usd=0.0001,
                              price_per_1k_input=1.0, price_per_1k_output=1.0)
    with pytest.raises(AgentError) as ei:
        cost_budget(0, 0.0, 300)
    assert ei.value.meta["budget_stop"] == "cost" and "cost_budget_usd" in str(ei.value)
    with pytest.raises(AgentError) as ei:
        cost_budget(100, 0.0, 300)  # something was already spent this cycle: an invalid cycle, not a stop
    assert "budget_stop" not in ei.value.meta
    roomy = make_budget(max_tokens=500, tokens_left=None, tokens_left_cycle=None, cost_left_usd=0.5,
                        price_per_1k_input=1.0, price_per_1k_output=2.0)
    assert roomy(0, 0.0, 300) == int((0.5 - 101 / 1000) / 2.0 * 1000)  # the reply is capped to what money is left


def test_a_missing_openai_extra_names_the_pip_command() -> None:
    code = ("import sys; sys.modules['openai'] = None\n"
            "from ralph_ml.agents.llm_client import require_openai\n"
            "try:\n    require_openai()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ConfigError") and "pip install 'ralph-ml[openai]'" in out


def test_an_error_echoing_the_key_is_redacted_in_the_error_and_the_transcript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-unit-SECRET-7a7a7a7a7a"
    monkeypatch.setenv("MY_LLM_KEY", secret)
    with FakeLLM([error(401, f"Incorrect API key provided: {secret}")]) as srv:
        c = ChatClient(LLMAgent(base_url=srv.url, api_key_env="MY_LLM_KEY", timeout_s=5))
        with pytest.raises(AgentError) as ei:
            c.complete(MSGS, schema=SCHEMA, name="t", max_tokens=50, transcript=Transcript(tmp_path / "t.jsonl", ("MY_LLM_KEY",)))
        assert srv.requests[0]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in str(ei.value) and "[REDACTED]" in str(ei.value)
    assert secret not in (tmp_path / "t.jsonl").read_text()
