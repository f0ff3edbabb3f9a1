"""Chat completions against any OpenAI-compatible endpoint, with the official ``openai`` client.

* Structured output degrades by level: ``json_schema`` → ``json_object`` → plain text (the
  JSON is then extracted from the reply); a level the server refuses (a 4xx that names
  ``response_format``) is dropped for the rest of the run.
* Network errors, timeouts, 408/409/429 and 5xx are retried ``max_retries`` times with
  exponential backoff, honouring ``Retry-After``; other 4xx fail at once.
* :meth:`ChatClient.converse` sends a reply that fails validation back to the model for a
  correction, at most ``max_corrections`` times, and counts every token spent.
* The API key is read from the environment variable ``api_key_env`` at each call and is never
  stored, logged or written; transcripts are redacted.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from ..config import LLMAgent
from ..errors import AgentError, ConfigError
from ._text import ReplyInvalid, clip, extract_json, redact, secret_values

T = TypeVar("T")

LEVELS = ("json_schema", "json_object", "text")
_RETRY_STATUS = (408, 409, 429)
MIN_COMPLETION_TOKENS = 32  # below this a call cannot return a useful answer: don't make it
CHARS_PER_TOKEN = 3.0  # conservative estimate when the server reports no usage


def require_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigError(
            "the `openai` agent needs the OpenAI Python client, which is not installed. "
            "Run: pip install 'ralph-ml[openai]'"
        ) from None
    return openai


def estimate_tokens(chars: int) -> int:
    return int(chars / CHARS_PER_TOKEN) + 1


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool  # the server gave no usage: counted from the characters
    level: str

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Transcript:
    """Append-only JSON lines of every request and reply of one cycle (secrets redacted)."""

    def __init__(self, path: Optional[Path], secret_names: tuple[str, ...] = ()) -> None:
        self.path = path
        self._secrets = secret_values(secret_names)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **data: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"ts": round(time.time(), 3), "event": event, **data}, default=str)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(redact(line, self._secrets) + "\n")


# A budget callback: (tokens spent so far this call chain, cost spent, prompt chars) -> max completion tokens.
BudgetFn = Callable[[int, float, int], int]


class ChatClient:
    def __init__(self, llm: LLMAgent, *, role: str = "agent") -> None:
        self.llm = llm
        self.role = role
        self.openai = require_openai()
        self._level = 0 if llm.structured_output == "auto" else LEVELS.index(llm.structured_output)
        self._max_tokens_param = "max_tokens"
        self._cached: tuple[str, Any] | None = None  # (key, client): creating a client costs an SSL context

    @property
    def level(self) -> str:
        return LEVELS[self._level]

    @property
    def endpoint(self) -> str:
        return self.llm.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    def check_key(self) -> None:
        env = self.llm.api_key_env
        if env and not os.environ.get(env):
            raise ConfigError(
                f"the environment variable {env} (agents.llm.api_key_env) is not set, so the `openai` "
                f"{self.role} cannot call {self.endpoint}. Export it (export {env}=...), or set "
                "agents.llm.api_key_env = \"\" for a local server that needs no key."
            )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return float(prompt_tokens) / 1000 * self.llm.price_per_1k_input + completion_tokens / 1000 * self.llm.price_per_1k_output

    def _client(self) -> Any:
        """The openai client for the key in the environment now (rebuilt when the key changes)."""
        env = self.llm.api_key_env
        key = (os.environ.get(env, "") if env else "") or "no-key"
        if self._cached is None or self._cached[0] != key:
            client = self.openai.OpenAI(api_key=key, base_url=self.llm.base_url, timeout=self.llm.timeout_s, max_retries=0)
            self._cached = (key, client)
        return self._cached[1]

    def _response_format(self, schema: dict[str, Any], name: str) -> dict[str, Any] | None:
        if self.level == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": False}}
        if self.level == "json_object":
            return {"type": "json_object"}
        return None

    def _wait_s(self, exc: Exception, attempt: int) -> float:
        wait: float = self.llm.retry_backoff_s * (2.0**attempt)
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            ms = headers.get("retry-after-ms")
            sec = headers.get("retry-after")
            try:
                if ms is not None:
                    wait = float(ms) / 1000
                elif sec is not None:
                    wait = float(sec)
            except ValueError:
                pass
        return max(0.0, min(wait, self.llm.retry_max_wait_s))

    def complete(
        self, messages: list[dict[str, str]], *, schema: dict[str, Any], name: str, max_tokens: int, transcript: Transcript
    ) -> ChatResult:
        """One completion (with retries and structured-output fallback); AgentError when it cannot be had."""
        oa = self.openai
        secrets = secret_values((self.llm.api_key_env,))  # error texts may echo a key: never pass it on
        attempt = 0
        while True:
            rf = self._response_format(schema, name)
            kwargs: dict[str, Any] = {
                "model": self.llm.model,
                "messages": messages,
                "temperature": self.llm.temperature,
                self._max_tokens_param: max_tokens,
            }
            if rf is not None:
                kwargs["response_format"] = rf
            transcript.write("request", level=self.level, max_tokens=max_tokens, attempt=attempt + 1, messages=messages)
            last: Exception
            try:
                resp = self._client().chat.completions.create(**kwargs)
            except oa.APIStatusError as exc:
                last = exc
                status = exc.status_code
                text = redact(_error_text(exc), secrets)
                transcript.write("error", status=status, error=text, level=self.level)
                low = text.lower()
                if status < 500 and status not in _RETRY_STATUS:
                    if self.level != "text" and any(w in low for w in ("response_format", "json_schema", "json_object", "response format")):
                        self._level += 1  # remembered for the rest of the run
                        transcript.write("fallback", level=self.level, reason=clip(text, 300))
                        continue
                    if self._max_tokens_param == "max_tokens" and "max_completion_tokens" in low:
                        self._max_tokens_param = "max_completion_tokens"
                        continue
                    raise AgentError(
                        f"the LLM endpoint {self.endpoint} refused the request with HTTP {status}: {clip(text, 500)}. "
                        f"Check agents.llm (model = {self.llm.model!r}, base_url, api_key_env); "
                        f"transcript: {transcript.path}"
                    ) from None
                if attempt >= self.llm.max_retries:
                    raise AgentError(
                        f"the LLM endpoint {self.endpoint} kept failing: HTTP {status} after {attempt + 1} attempt(s) "
                        f"(agents.llm.max_retries = {self.llm.max_retries}): {clip(text, 300)}; transcript: {transcript.path}"
                    ) from None
            except oa.APIConnectionError as exc:  # includes APITimeoutError
                last = exc
                what = "timed out" if isinstance(exc, oa.APITimeoutError) else f"could not be reached ({redact(str(exc), secrets)})"
                transcript.write("error", error=f"{type(exc).__name__}: {exc}", level=self.level)
                if attempt >= self.llm.max_retries:
                    raise AgentError(
                        f"the LLM endpoint {self.endpoint} {what} on {attempt + 1} attempt(s) "
                        f"(agents.llm.timeout_s = {self.llm.timeout_s:g}, max_retries = {self.llm.max_retries}); "
                        f"transcript: {transcript.path}"
                    ) from None
            except oa.OpenAIError as exc:
                transcript.write("error", error=f"{type(exc).__name__}: {exc}")
                raise AgentError(
                    f"the LLM endpoint {self.endpoint} returned an unusable response ({type(exc).__name__}: "
                    f"{clip(redact(str(exc), secrets), 300)}); transcript: {transcript.path}"
                ) from None
            else:
                result = self._result(resp, messages)
                transcript.write(
                    "response", text=result.text, prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens, estimated=result.estimated, level=result.level,
                )
                return result
            wait = self._wait_s(last, attempt)
            transcript.write("retry", attempt=attempt + 1, wait_s=wait)
            time.sleep(wait)
            attempt += 1

    def _result(self, resp: Any, messages: list[dict[str, str]]) -> ChatResult:
        try:
            text = resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            text = ""
        usage = getattr(resp, "usage", None)
        pt = getattr(usage, "prompt_tokens", None)
        ct = getattr(usage, "completion_tokens", None)
        if isinstance(pt, int) and isinstance(ct, int):
            return ChatResult(text, pt, ct, False, self.level)
        chars = sum(len(m.get("content", "")) for m in messages)
        return ChatResult(text, estimate_tokens(chars), estimate_tokens(len(text)), True, self.level)

    def converse(
        self,
        messages: list[dict[str, str]],
        *,
        schema: dict[str, Any],
        name: str,
        validate: Callable[[dict[str, Any]], T],
        budget: BudgetFn,
        transcript: Transcript,
        meta: dict[str, object] | None = None,
    ) -> tuple[T, int, float]:
        """Ask, validate, send errors back for a correction; (value, tokens, cost) or AgentError.

        The AgentError of a failed conversation carries the tokens and cost it spent.
        """
        tokens, cost = 0, 0.0
        msgs = list(messages)
        for round_ in range(self.llm.max_corrections + 1):
            chars = sum(len(m["content"]) for m in msgs)
            try:
                max_tokens = budget(tokens, cost, chars)
                result = self.complete(msgs, schema=schema, name=name, max_tokens=max_tokens, transcript=transcript)
            except AgentError as exc:
                raise AgentError(str(exc), tokens_used=tokens, cost_usd=cost, meta={**(meta or {}), **exc.meta}) from None
            tokens += result.tokens
            cost += self.cost(result.prompt_tokens, result.completion_tokens)
            try:
                value = validate(extract_json(result.text))
            except ReplyInvalid as exc:
                transcript.write("invalid", round=round_ + 1, error=str(exc))
                if round_ >= self.llm.max_corrections:
                    raise AgentError(
                        f"the model's reply was still invalid after {round_} correction(s) "
                        f"(agents.llm.max_corrections = {self.llm.max_corrections}): {clip(str(exc), 600)}; "
                        f"transcript: {transcript.path}",
                        tokens_used=tokens, cost_usd=cost, meta=dict(meta or {}),
                    ) from None
                msgs += [
                    {"role": "assistant", "content": clip(result.text, 4000)},
                    {"role": "user", "content": f"Your reply could not be used: {exc}\nReply again with the corrected JSON object only."},
                ]
                continue
            return value, tokens, cost
        raise AssertionError("unreachable")  # pragma: no cover


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(getattr(exc, "message", None) or exc)
