"""The loopback HTTP server that the tests' fake services (tests/gdc_server.py, tests/llm_server.py) run on.

A ThreadingHTTPServer on 127.0.0.1 and a free port, served from a daemon thread, so a test talks to a real socket
(timeouts, dropped connections, Range requests) without anything leaving the machine. A subclass builds its
request handler class and passes it in; `url` is the base URL (plus the subclass's `prefix`), and the server runs
for the span of a `with` block (or between `start()` and `stop()`).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

_S = TypeVar("_S", bound="LoopbackServer")


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1:0; subclasses set `prefix` and build the handler."""

    #: path appended to `url` (e.g. "/v1" for an OpenAI-style API)
    prefix: str = ""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self._lock = threading.Lock()  # guards the subclass's request log and fault queues across handler threads
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True  # a hung client connection must not keep the test process alive
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def start(self: _S) -> _S:
        """Serve in a daemon thread (short poll interval: stop() returns quickly)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; a server never started is only closed (shutdown() would wait forever)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
