"""A client for an OpenAI-compatible chat-completions endpoint (a local vLLM, llama.cpp or Ollama server, or a
hosted one), with deterministic settings and one retry policy.

Requests ask for temperature 0, top_p 1 and a fixed seed, so the same report and questions give the same answer
where the server honours them. Dropped connections, timeouts, HTTP 429 (honouring `Retry-After`) and 5xx are retried
with exponential backoff (tenacity); other refusals fail at once with the server's own short message. The API key is
read from a file, sent only in the `Authorization` header and never formatted into a log line, message or repr.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import tenacity

from pipeline.errors import PipelineError
from pipeline.gdc.client import parse_retry_after  # one reading of Retry-After (seconds or an HTTP date)
from pipeline.secret_files import read_secret_file

log = logging.getLogger(__name__)

#: the settings that make an answer repeatable (where the server honours them); not configurable on purpose
TEMPERATURE = 0.0
TOP_P = 1.0


class LLMError(PipelineError):
    """The endpoint cannot be used as configured (refused key, unknown model, wrong URL): nothing will work."""


class LLMUnavailable(LLMError):
    """The endpoint kept failing (dropped connections, timeouts, 429, 5xx) after every retry."""


class LLMRefused(PipelineError):
    """The endpoint refused one request (e.g. a report too long for the model): that case fails, others go on."""


class _Transient(Exception):
    """A failure worth retrying; `retry_after` is the server's own wait in seconds, when it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def read_key(path: str | Path | None) -> str | None:
    """The API key from a file, or None when no file is configured (a local server needs none)."""
    return read_secret_file(path, "LLM key file", "llm.key_file", LLMError)


@dataclass(frozen=True)
class ChatSettings:
    """What every request carries besides the messages, and how failures are retried."""

    model: str
    max_tokens: int = 1024
    seed: int = 0
    json_mode: bool = True  # ask for `response_format: json_object`
    timeout: float = 120.0  # seconds of silence before an attempt counts as dropped
    retries: int = 5
    backoff: float = 2.0  # seconds before the first retry, doubling, capped at backoff_max
    backoff_max: float = 60.0
    retry_after_max: float = 600.0


def _detail(response: httpx.Response) -> str:
    """The server's own short error message (`{"error": {"message": ...}}` or text), for messages."""
    try:
        body = response.json()
        message = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(message, dict):
            message = message.get("message", message)
    except (ValueError, json.JSONDecodeError):
        message = response.text
    message = " ".join(str(message).split())[:300]
    return f" ({message})" if message else ""


class ChatClient:
    """POST {base_url}/chat/completions; `sleep` is injectable so tests do not wait."""

    def __init__(self, base_url: str, settings: ChatSettings, key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        if not base_url.startswith(("http://", "https://")):
            raise LLMError(f"LLM base_url {base_url!r} must start with http:// or https://")
        if not settings.model:
            raise LLMError("no LLM model given (llm.model): the name the server serves, e.g. its /v1/models id")
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self._key = key
        self._sleep = sleep
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(headers=headers, timeout=settings.timeout, follow_redirects=False)

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient({self.base_url!r}, model={self.settings.model!r}, key={'set' if self._key else 'none'})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def payload(self, messages: Sequence[dict[str, str]]) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": list(messages), "temperature": TEMPERATURE,
                                "top_p": TOP_P, "seed": s.seed, "max_tokens": s.max_tokens, "stream": False}
        if s.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _attempt(self, body: dict[str, Any]) -> str:
        """One request: the reply's text, _Transient, LLMError or LLMRefused."""
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TimeoutException as err:
            raise _Transient(f"timed out after {self.settings.timeout:g} s ({type(err).__name__})") from None
        except httpx.TransportError as err:  # refused, reset, dropped mid-answer
            raise _Transient(f"connection failed ({type(err).__name__}: {err})") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}{_detail(response)}", parse_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise LLMError(f"the LLM endpoint {self.url} refused the request (HTTP {status}){_detail(response)}: "
                           "check llm.key_file")
        if status == 404:
            raise LLMError(f"the LLM endpoint {self.url} answered HTTP 404{_detail(response)}: check llm.base_url "
                           "(it usually ends in /v1) and llm.model")
        if status >= 400:
            raise LLMRefused(f"the LLM endpoint refused the request (HTTP {status}){_detail(response)}")
        try:
            answer = response.json()
            content = answer["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Transient(f"HTTP {status} answer is not a chat completion ({len(response.content)} bytes)") from None
        if not isinstance(content, str):
            raise _Transient("the chat completion holds no text content")
        return content

    def _wait(self, state: tenacity.RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        s = self.settings
        if isinstance(err, _Transient) and err.retry_after is not None:
            return max(0.0, min(err.retry_after, s.retry_after_max))
        base = min(s.backoff_max, s.backoff * 2 ** (state.attempt_number - 1))
        return base * (1.0 + 0.1 * random.random())

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("LLM request: %s; retry %d/%d in %.1f s", err, state.attempt_number, self.settings.retries, wait)

    def complete(self, messages: Sequence[dict[str, str]]) -> str:
        """The reply to `messages`, retrying transient failures; LLMUnavailable once the retries are spent."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Transient),
            stop=tenacity.stop_after_attempt(self.settings.retries + 1),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        body = self.payload(messages)
        try:
            return retrying(self._attempt, body)
        except _Transient as err:
            raise LLMUnavailable(
                f"the LLM endpoint {self.url} failed {self.settings.retries + 1} times in a row, last: {err}"
            ) from None
