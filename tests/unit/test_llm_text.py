"""Getting JSON out of free-form model replies; clipping; redaction of secrets."""

from __future__ import annotations

import pytest

from ralph_ml.agents._text import ReplyInvalid, clip, extract_json, redact, secret_values


@pytest.mark.parametrize(
    "reply",
    [
        '{"params": {"x": 0.5}}',
        'Sure, here it is:\n```json\n{"params": {"x": 0.5}}\n```\nGood luck!',
        "```\n{\"params\": {\"x\": 0.5}}\n```",
        'I think {"params": {"x": 0.5}} is best. {"other": 1}',
        'Reasoning with a brace } first, then {"params": {"x": 0.5}}',
    ],
)
def test_extract_json_finds_the_object(reply: str) -> None:
    assert extract_json(reply) == {"params": {"x": 0.5}}


def test_braces_inside_strings_do_not_break_the_balanced_scan() -> None:
    reply = 'text {"patch": "if x { y }\\n", "rationale": "a } b"} tail'
    assert extract_json(reply) == {"patch": "if x { y }\n", "rationale": "a } b"}


@pytest.mark.parametrize("reply", ["", "no json at all", "[1, 2, 3]", "{broken: json"])
def test_extract_json_says_what_is_wrong(reply: str) -> None:
    with pytest.raises(ReplyInvalid) as ei:
        extract_json(reply)
    assert "JSON object" in str(ei.value) or "empty" in str(ei.value)


def test_clip_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    text = "A" * 500 + "B" * 500
    out = clip(text, 200)
    assert len(out) <= 200 and out.startswith("A") and out.endswith("B") and "chars cut" in out
    tail = clip(text, 100, keep_tail=True)
    assert len(tail) <= 100 and tail.endswith("B" * 40)
    assert clip("short", 100) == "short"


def test_secrets_from_named_and_key_like_variables_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_LLM_CRED", "value-of-the-named-var")
    monkeypatch.setenv("SOME_API_KEY", "sk-abcdefgh12345")
    monkeypatch.setenv("HARMLESS", "sk-not-a-secret-name")
    secrets = secret_values(["MY_LLM_CRED"])
    text = "a value-of-the-named-var b sk-abcdefgh12345 c sk-not-a-secret-name"
    assert redact(text, secrets) == "a [REDACTED] b [REDACTED] c sk-not-a-secret-name"
