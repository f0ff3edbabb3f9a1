"""Text helpers for agents: JSON out of free-form replies, clipping, secret redaction."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_SECRET_NAME_RE = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_MIN_SECRET_LEN = 8  # shorter values ("true", "1") are not worth redacting and would mangle text


class ReplyInvalid(ValueError):
    """An agent's reply could not be used; the message is sent back to it for a correction."""


def _balanced_objects(text: str) -> Iterable[str]:
    """Every top-level ``{...}`` span of ``text``, braces inside JSON strings ignored."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                if esc:
                    esc = False
                elif ch == "\\":
                    esc = True
                elif ch == '"':
                    in_str = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield text[start : i + 1]
                    break
        start = text.find("{", start + 1)


def extract_json(text: str) -> dict[str, Any]:
    """The JSON object in a model's reply: the whole text, a fenced block, or the first balanced object.

    Raises :class:`ReplyInvalid` saying what was wrong, for a correction round.
    """
    stripped = text.strip()
    if not stripped:
        raise ReplyInvalid("the reply was empty; answer with one JSON object")
    candidates = [stripped, *(m.group(1).strip() for m in _FENCE_RE.finditer(text)), *_balanced_objects(text)]
    first_error = ""
    for cand in candidates:
        try:
            value = json.loads(cand)
        except ValueError as exc:
            first_error = first_error or f"{exc}"
            continue
        if isinstance(value, dict):
            return value
        first_error = first_error or f"the JSON value is a {type(value).__name__}, not an object"
    raise ReplyInvalid(f"the reply is not a JSON object ({first_error or 'no {...} found'}); answer with one JSON object only")


def clip(text: str, limit: int, *, keep_tail: bool = False) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    if limit < 40:
        return text[:limit]
    if keep_tail:
        marker = f"[... {len(text) - limit} chars cut ...]\n"
        return marker + text[len(text) - (limit - len(marker)) :]
    head = (limit - 40) * 2 // 3
    tail = limit - 40 - head
    return text[:head] + f"\n[... {len(text) - head - tail} chars cut ...]\n" + (text[len(text) - tail :] if tail > 0 else "")


def secret_values(names: Iterable[str] = ()) -> list[str]:
    """Values of the named variables plus of every *KEY*/*TOKEN*/*SECRET* variable in the environment."""
    wanted = {n for n in names if n}
    out = {
        v
        for k, v in os.environ.items()
        if (k in wanted or _SECRET_NAME_RE.search(k)) and len(v) >= _MIN_SECRET_LEN
    }
    return sorted(out, key=len, reverse=True)  # longest first: a key containing another is masked whole


def redact(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        if value and value in text:
            text = text.replace(value, "[REDACTED]")
    return text
