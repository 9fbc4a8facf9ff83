"""A loopback server that speaks the OpenAI chat-completions API our LLM client uses, with fault injection.

`POST {prefix}/chat/completions` answers with `answer(request_body) -> content` wrapped in a chat completion; with
a `key`, a request without `Authorization: Bearer <key>` gets 401. Faults are queued and consumed one per request:
`status` (code, optional Retry-After), `drop` (close the connection without answering), `sleep` (answer only after
`seconds`, to make the client time out), `garbage` (an HTTP 200 whose body is not JSON). Every request is recorded.
Used by tests/test_descriptions.py; the socket and thread come from tests/loopback.py.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from loopback import LoopbackServer


@dataclass(frozen=True)
class Fault:
    kind: str  # status | drop | sleep | garbage
    code: int = 0
    retry_after: str | None = None
    seconds: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def user_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def last_user_message(body: dict[str, Any]) -> str:
    return user_messages(body)[-1]


class LlmServer(LoopbackServer):
    """Start with `with LlmServer(answer) as server:`; `server.url` is the base URL (ending in /v1)."""

    def __init__(self, answer: Callable[[dict[str, Any]], str], key: str | None = None, prefix: str = "/v1"):
        self.answer = answer
        self.key = key
        self.prefix = prefix
        self.faults: list[Fault] = []
        self.requests: list[Seen] = []
        super().__init__(self._handler())

    def fault(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.close_connection = True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    return self._json(400, {"error": {"message": "body is not JSON"}})
                with server._lock:
                    server.requests.append(Seen(self.path, dict(self.headers.items()), body))
                if self.path != f"{server.prefix}/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if server.key is not None and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._json(401, {"error": {"message": "invalid api key"}})
                fault = server._next_fault()
                if fault is not None:
                    if fault.kind == "status":
                        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                        return self._json(fault.code, {"error": {"message": f"injected {fault.code}"}}, extra)
                    if fault.kind == "drop":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault.kind == "sleep":
                        time.sleep(fault.seconds)
                    if fault.kind == "garbage":
                        raw = b"<html>gateway hiccup</html>"
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(raw)))
                        self.end_headers()
                        self.wfile.write(raw)
                        return
                content = server.answer(body)
                self._json(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                })

        return Handler
