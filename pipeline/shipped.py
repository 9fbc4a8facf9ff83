"""Data files shipped inside the package (pipeline/data/{kind}/{name}.json): prompt files, question sets, HLSS
attribute files. One lookup for all of them: by name (never a path), a user's own file winning over the shipped
one, and errors that list what is shipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from pipeline.errors import PipelineError
from pipeline.formats import PathLike

DATA_DIR = Path(__file__).resolve().parent / "data"
#: what a shipped file's name may look like: a task or cohort name, optionally with ".json" (no separators)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def shipped_dir(kind: str) -> Path:
    """pipeline/data/{kind}/ ("prompts", "questions", "hlss")."""
    return DATA_DIR / kind


def shipped_files(kind: str) -> dict[str, Path]:
    """Name -> shipped `{name}.json` of a kind, sorted by name."""
    return {p.stem: p for p in sorted(shipped_dir(kind).glob("*.json"))}


def shipped_file(kind: str, name: str) -> Path | None:
    """The shipped file called `name` (".json" optional, exact name first, then lower case), or None; a name that
    looks like a path is never looked up."""
    stem = name[:-5] if name.endswith(".json") else name
    if not _NAME.fullmatch(stem):
        return None
    for candidate in dict.fromkeys((stem, stem.lower())):
        path = shipped_dir(kind) / f"{candidate}.json"
        if path.is_file():
            return path
    return None


def given_file(given: PathLike | None, what: str, setting: str,
               error: Callable[[str], Exception] = PipelineError) -> Path | None:
    """The user's own file (`setting` in config.yaml), None when unset; set but absent raises `error(message)`."""
    if given is None or str(given) == "":
        return None
    path = Path(given).expanduser()
    if not path.is_file():
        raise error(f"{what} {path} ({setting}): no such file")
    return path


def resolve_shipped(kind: str, name: str, given: PathLike | None = None, *, what: str, setting: str, hint: str,
                    error: Callable[[str], Exception] = PipelineError, of: str = "task") -> Path:
    """`given` when set (it must exist), else the shipped file `name` (a task's, or whatever `of` says); neither
    raises `error(message)` listing what is shipped, then `hint` (how to give one's own)."""
    own = given_file(given, what, setting, error)
    if own is not None:
        return own
    shipped = shipped_file(kind, name)
    if shipped is None:
        raise error(f"no shipped {what} for {of} '{name}' (shipped: {sorted(shipped_files(kind))}); {hint}")
    return shipped
