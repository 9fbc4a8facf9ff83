"""HTTP access to the GDC API with one retry policy, and a token that never leaves the request header.

Multi-gigabyte downloads from a shared public service meet dropped connections, rate limits (429) and
overloaded gateways (5xx); those are retried with exponential backoff, honouring `Retry-After`. Everything else
(401/403/404, bad requests) fails at once with a message that says what to fix. The token is read from a file,
sent as `X-Auth-Token` only to the API host (not forwarded on redirects) and never formatted into a message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.secret_files import read_secret_file

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.gdc.cancer.gov"
#: Errors raised while connecting or reading that mean "the network failed", not "the request was wrong".
NETWORK_ERRORS = (
    ConnectionError,
    TimeoutError,
    socket.timeout,
    ssl.SSLError,
    http.client.HTTPException,
    urllib.error.URLError,
)


class TransientError(Exception):
    """A failure worth retrying; `retry_after` is the server's own wait in seconds, when it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class RangeNotSatisfiable(TransientError):
    """HTTP 416: the bytes kept from an earlier attempt do not fit the file on the server; start over."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait: delay = backoff_base * 2**attempt, capped; Retry-After wins when given."""

    retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 120.0
    retry_after_max: float = 900.0
    jitter: float = 0.1  # fraction added at random so parallel downloads do not retry in lockstep
    timeout: float = 60.0  # seconds of silence on a socket before the attempt counts as dropped

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_max))
        base = min(self.backoff_max, self.backoff_base * (2**attempt))
        return base * (1.0 + self.jitter * random.random())


def read_token(path: str | Path | None) -> str | None:
    """The token from a file (the GDC portal's download), or None when no file is configured."""
    return read_secret_file(path, "token file", "gdc.token_file")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class _NoTokenOnRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects but never carry the token along (it is added unredirected; this is belt and braces)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.remove_header("X-auth-token")
        return new


class GdcClient:
    """One API endpoint, one optional token, one retry policy; `sleep` is injectable so tests do not wait."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not api_url.startswith(("http://", "https://")):
            raise PipelineError(f"GDC api_url {api_url!r} must start with http:// or https://")
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self._opener = urllib.request.build_opener(_NoTokenOnRedirect())

    def __repr__(self) -> str:  # never show the token
        return f"GdcClient({self.api_url!r}, token={'set' if self._token else 'none'})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def open(
        self, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> http.client.HTTPResponse:
        """One attempt: a 2xx response (caller reads and closes it), TransientError, or PipelineError."""
        req = urllib.request.Request(self.api_url + path, data=body, method="POST" if body is not None else "GET")
        req.add_header("User-Agent", f"hive-wsi/{__version__}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        if self._token:
            req.add_unredirected_header("X-Auth-Token", self._token)
        try:
            return self._opener.open(req, timeout=self.policy.timeout)
        except urllib.error.HTTPError as err:
            raise self._http_error(err, path) from None
        except NETWORK_ERRORS as err:
            if isinstance(getattr(err, "reason", err), ssl.SSLCertVerificationError):
                raise PipelineError(f"cannot verify the TLS certificate of {self.api_url}: {_reason(err)}") from None
            raise TransientError(f"{type(err).__name__}: {_reason(err)}") from None

    def _http_error(self, err: urllib.error.HTTPError, path: str) -> Exception:
        status = err.code
        detail = _error_detail(err)
        err.close()
        if status == 416:
            return RangeNotSatisfiable(f"HTTP 416{detail}")
        if status == 429 or status >= 500:
            return TransientError(f"HTTP {status}{detail}", parse_retry_after(err.headers.get("Retry-After")))
        if status in (401, 403):
            if self.has_token:
                hint = "the token was refused or has no access to this file; download a fresh token from the GDC portal"
            else:
                hint = "this is controlled-access data: give a token file (gdc.token_file / --token-file)"
            return PipelineError(f"GDC refused {path} (HTTP {status}){detail}: {hint}")
        if status == 404:
            return PipelineError(f"GDC has no {path} (HTTP 404){detail}: check the file id and gdc.api_url")
        return PipelineError(f"GDC request {path} failed (HTTP {status}){detail}")

    def wait(self, attempt: int, err: TransientError, what: str) -> None:
        """Log and sleep before retry number `attempt + 1`."""
        delay = self.policy.delay(attempt, err.retry_after)
        source = "Retry-After" if err.retry_after is not None else "backoff"
        log.warning("%s: %s; retry %d/%d in %.1f s (%s)", what, err, attempt + 1, self.policy.retries, delay, source)
        self.sleep(delay)

    def post_json(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON body and parse the JSON answer, retrying transient failures."""
        body = json.dumps(payload).encode()
        for attempt in range(self.policy.retries + 1):
            try:
                with self.open(path, body=body, headers={"Content-Type": "application/json"}) as resp:
                    try:
                        raw = resp.read()
                    except NETWORK_ERRORS as err:
                        raise TransientError(f"{type(err).__name__} while reading: {_reason(err)}") from None
                try:
                    return json.loads(raw)
                except json.JSONDecodeError:
                    raise TransientError(f"answer of {len(raw)} bytes is not JSON (cut short?)") from None
            except TransientError as err:
                if attempt >= self.policy.retries:
                    raise PipelineError(
                        f"GDC request POST {self.api_url}{path} failed after {attempt + 1} attempts: {err}"
                    ) from None
                self.wait(attempt, err, f"POST {path}")
        raise AssertionError("unreachable")


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason if reason is not None else err) or type(err).__name__


def _error_detail(err: urllib.error.HTTPError) -> str:
    """The API's own short message (`{"message": ...}`), when it sent one."""
    try:
        raw = err.read(2000)
    except Exception:  # the body of an error answer is a courtesy; a broken one must not hide the status
        return ""
    try:
        message = json.loads(raw).get("message", "")
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace").strip()
    message = " ".join(str(message).split())[:200]
    return f" ({message})" if message else ""
