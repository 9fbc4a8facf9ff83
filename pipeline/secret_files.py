"""Reading a credential (GDC token, LLM API key) from a file the user keeps outside config.yaml.

One rule for every secret: an unset path means none is needed; a set path must hold exactly one word. The messages
name the file and the config key, never the content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipeline.errors import PipelineError


def read_secret_file(path: str | Path | None, what: str, setting: str,
                     error: Callable[[str], Exception] = PipelineError) -> str | None:
    """The secret in `path` (whitespace around it stripped), or None when no file is configured.

    `what` names it in messages ("token file"), `setting` is the config key that sets the path; a missing, empty or
    multi-word file raises `error(message)`.
    """
    if path is None or str(path) == "":
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"{what} {path} does not exist ({setting})")
    secret = path.read_text().strip()
    if not secret:
        raise error(f"{what} {path} is empty")
    if any(c.isspace() for c in secret):
        raise error(f"{what} {path} holds more than one line or word")
    return secret
