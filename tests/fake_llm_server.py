"""A local OpenAI-compatible chat-completions server for tests (stdlib http.server in a thread).

Each POST to ``/v1/chat/completions`` takes the next scripted :class:`Reply` (or calls a
scripted function with the request body); every request is recorded (body + headers) so
tests can assert what the real ``openai`` client sent.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # the assistant message; wrapped in a chat.completion
    body: Any = None  # raw JSON body (overrides content)
    usage: tuple[int, int] | None = (100, 20)  # (prompt, completion) tokens; None: no usage field
    sleep_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def ok(content: str | dict[str, Any], usage: tuple[int, int] | None = (100, 20), **kw: Any) -> Reply:
    return Reply(content=content if isinstance(content, str) else json.dumps(content), usage=usage, **kw)


def error(status: int, message: str, **kw: Any) -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": "invalid_request_error", "code": None}}, **kw)


Script = Union[Reply, Callable[[dict[str, Any]], Reply]]


class FakeLLM:
    def __init__(self, script: list[Script] | None = None, default: Callable[[dict[str, Any]], Reply] | None = None) -> None:
        self.script: list[Script] = list(script or [])
        self.default = default
        self.requests: list[dict[str, Any]] = []  # {"body": ..., "headers": (lower-case names), "path": ...}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    outer.requests.append(
                        {"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}, "path": self.path}
                    )
                    item: Script | None = outer.script.pop(0) if outer.script else outer.default
                if item is None:
                    reply = error(400, "fake server: no scripted reply left")
                else:
                    reply = item(body) if callable(item) else item
                if reply.sleep_s:
                    time.sleep(reply.sleep_s)
                if reply.body is not None:
                    payload = reply.body
                else:
                    payload = {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply.content or ""}}],
                    }
                    if reply.usage is not None:
                        pt, ct = reply.usage
                        payload["usage"] = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def user_prompts(self) -> list[str]:
        """The last user message of each request."""
        out = []
        for r in self.requests:
            msgs = [m for m in r["body"].get("messages", []) if m.get("role") == "user"]
            out.append(msgs[-1]["content"] if msgs else "")
        return out
