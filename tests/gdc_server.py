"""A loopback server that speaks the parts of the GDC API our client uses, with fault injection.

`POST /files` evaluates `filters` (and/or, in, =), projects `fields` (nested ones through lists of dicts, leaving
out keys a record does not have, as the GDC does), sorts and pages with `size`/`from`, and reports
`pagination.total`. `GET /data/{id}` serves the bytes with Content-Disposition and Content-Length,
answers `Range: bytes=a-[b]` with 206 + Content-Range, and refuses controlled files without the right
`X-Auth-Token`. Faults are queued per file id (or for /files) and consumed one per request. Every request is
recorded so tests can say what the client sent. Used by tests/test_gdc.py and bench/download.py; the socket and
thread come from tests/loopback.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from loopback import LoopbackServer


@dataclass
class FakeFile:
    file_name: str
    data: bytes
    project: str
    submitter_id: str
    diagnoses: list[str] = field(default_factory=list)
    access: str = "open"
    data_format: str = "SVS"
    data_type: str = "Slide Image"
    experimental_strategy: str = "Diagnostic Slide"
    file_id: str = ""
    #: the case's clinical records as the GDC nests them: {"demographic": {...}, "diagnoses": [{...}],
    #: "follow_ups": [{...}]}; diagnoses here are merged, by position, with the primary diagnoses above
    clinical: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.file_id:
            self.file_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"gdc-test/{self.file_name}/{self.project}"))

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    def case(self) -> dict[str, Any]:
        clinical = dict(self.clinical)
        extra = list(clinical.pop("diagnoses", []))
        n = max(len(self.diagnoses), len(extra))
        diagnoses = [
            {**({"primary_diagnosis": self.diagnoses[i]} if i < len(self.diagnoses) else {}),
             **(extra[i] if i < len(extra) else {})}
            for i in range(n)
        ]  # fmt: skip
        return {
            "submitter_id": self.submitter_id,
            "case_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"case/{self.submitter_id}")),
            "project": {"project_id": self.project},
            "diagnoses": diagnoses,
            **clinical,
        }

    def hit(self) -> dict[str, Any]:
        return {
            "id": self.file_id,
            "file_id": self.file_id,
            "file_name": self.file_name,
            "md5sum": self.md5,
            "file_size": len(self.data),
            "state": "released",
            "access": self.access,
            "data_format": self.data_format,
            "data_type": self.data_type,
            "experimental_strategy": self.experimental_strategy,
            "cases": [self.case()],
        }


@dataclass(frozen=True)
class Fault:
    """kind: 'status' (code, retry_after), 'drop' (after n body bytes), 'corrupt', 'ignore_range'."""

    kind: str
    code: int = 0
    retry_after: str | None = None
    after: int = 0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _values(obj: Any, parts: list[str]) -> list[Any]:
    """All values at a dotted path, walking through lists (cases is a list, diagnoses too)."""
    if isinstance(obj, list):
        return [v for item in obj for v in _values(item, parts)]
    if not parts:
        return [obj]
    if not isinstance(obj, dict) or parts[0] not in obj:
        return []
    return _values(obj[parts[0]], parts[1:])


def matches(flt: dict[str, Any], hit: dict[str, Any]) -> bool:
    op = flt["op"].lower()
    if op == "and":
        return all(matches(f, hit) for f in flt["content"])
    if op == "or":
        return any(matches(f, hit) for f in flt["content"])
    if op in ("in", "="):
        name = flt["content"]["field"].removeprefix("files.")
        wanted = flt["content"]["value"]
        wanted = wanted if isinstance(wanted, list) else [wanted]
        return any(v in wanted for v in _values(hit, name.split(".")))
    raise ValueError(f"unsupported op {op!r}")


def _project(hit: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Keep only the requested dotted fields (plus id), as the GDC does: a null value stays null, a key the record
    lacks stays out, and so does a nested record (or list) left with none of the requested keys."""
    out: dict[str, Any] = {"id": hit["id"]}
    for name in fields:
        _copy(hit, out, name.split("."))
    return _prune(out)


def _prune(value: Any) -> Any:
    """Drop the empty dicts and lists `_copy` leaves where no requested key was present (after every field, so
    list items stay aligned while copying)."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not (isinstance(v, (dict, list)) and not v)}
    if isinstance(value, list):
        return [v for v in (_prune(v) for v in value) if not (isinstance(v, dict) and not v)]
    return value


def _copy(src: Any, dst: Any, parts: list[str]) -> None:
    key = parts[0]
    if not isinstance(src, dict) or key not in src:
        return
    value = src[key]
    if len(parts) == 1:
        dst[key] = value
    elif isinstance(value, list):
        items = dst.setdefault(key, [{} for _ in value])
        for s, d in zip(value, items):
            _copy(s, d, parts[1:])
    else:
        _copy(value, dst.setdefault(key, {}), parts[1:])


class GdcServer(LoopbackServer):
    """Start with `with GdcServer(files) as server:`; `server.url` is the API base."""

    def __init__(self, files: list[FakeFile], token: str | None = None):
        self.files = {f.file_id: f for f in files}
        self.token = token
        self.data_faults: dict[str, list[Fault]] = {}
        self.files_faults: list[Fault] = []
        self.always_corrupt: set[str] = set()
        self.requests: list[Seen] = []
        super().__init__(self._handler())

    def fault(self, file_id: str, *faults: Fault) -> None:
        self.data_faults.setdefault(file_id, []).extend(faults)

    def data_requests(self, file_id: str | None = None) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith("/data/") and (file_id is None or file_id in r.path)]

    def _next_fault(self, key: str | None) -> Fault | None:
        with self._lock:
            queue = self.files_faults if key is None else self.data_faults.get(key, [])
            return queue.pop(0) if queue else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _record(self, body: bytes = b"") -> None:
                with server._lock:
                    server.requests.append(Seen(self.command, self.path, dict(self.headers.items()), body))

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _status_fault(self, fault: Fault) -> None:
                extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._json(fault.code, {"message": f"injected {fault.code}"}, extra)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._record(body)
                if self.path.split("?")[0] != "/files":
                    return self._json(404, {"message": "no such endpoint"})
                fault = server._next_fault(None)
                if fault and fault.kind == "status":
                    return self._status_fault(fault)
                query = json.loads(body)
                try:
                    hits = [
                        f.hit()
                        for f in server.files.values()
                        if matches(query.get("filters") or {"op": "and", "content": []}, f.hit())
                    ]
                except (KeyError, ValueError) as err:
                    return self._json(400, {"message": f"bad filters: {err}"})
                key, _, order = str(query.get("sort", "file_id:asc")).partition(":")
                hits.sort(key=lambda h: h[key], reverse=order == "desc")
                size, start = int(query.get("size", 10)), int(query.get("from", 0))
                fields = [f for f in str(query.get("fields", "")).split(",") if f]
                page = [_project(h, fields) if fields else h for h in hits[start : start + size]]
                pagination = {"count": len(page), "total": len(hits), "size": size, "from": start, "sort": ""}
                self._json(200, {"data": {"hits": page, "pagination": pagination}, "warnings": {}})

            def do_GET(self) -> None:
                self._record()
                if not self.path.startswith("/data/"):
                    return self._json(404, {"message": "no such endpoint"})
                file_id = self.path[len("/data/") :].split("?")[0]
                f = server.files.get(file_id)
                if f is None:
                    return self._json(404, {"message": f"file {file_id} not found"})
                if f.access == "controlled":
                    given = self.headers.get("X-Auth-Token")
                    if given is None:
                        return self._json(401, {"message": "authentication required"})
                    if given != server.token:
                        return self._json(403, {"message": "token not authorized"})
                fault = server._next_fault(file_id)
                if fault and fault.kind == "status":
                    return self._status_fault(fault)
                data = f.data
                if file_id in server.always_corrupt or (fault and fault.kind == "corrupt"):
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
                partial = rng is not None and not (fault and fault.kind == "ignore_range")
                if partial:
                    first, _, last = rng.removeprefix("bytes=").partition("-")
                    start = int(first)
                    end = int(last) if last else end
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                body = data[start : end + 1]
                self.send_response(206 if partial else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Disposition", f'attachment; filename="{f.file_name}"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if fault and fault.kind == "drop":
                    self.wfile.write(body[: fault.after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler
