"""HLSS's per-level visual attribute descriptions: the texts whose embeddings initialise the three projection heads.

A file holds, for each hierarchy level (patch, slide, patient), a list of named visual attributes, each described by a
few short sentences of what the eye sees on H&E at that level:

    {"patch": [{"attribute": "nuclear_pleomorphism", "texts": ["...", "..."]}, ...], "slide": [...], "patient": [...]}

Each attribute becomes one head row: the normalised mean of its normalised text embeddings (HLSS's recipe). The file
is validated as a whole so a user fixing a hand-written file sees every problem at once, and its digest is recorded in
the checkpoint so a trained encoder says which descriptions built its heads. Shipped files live in
`pipeline/data/hlss/` (see SOURCES.md there); `pretrain.attributes` in config.yaml points at a user's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.formats import atomic_path
from pipeline.pretrain import LEVELS
from pipeline.shipped import given_file, shipped_dir, shipped_file

if TYPE_CHECKING:
    from pipeline.features.architectures.base import Backbone

log = logging.getLogger(__name__)

#: where the shipped attribute files live (package data).
SHIPPED_KIND = "hlss"
SHIPPED_DIR = shipped_dir(SHIPPED_KIND)
#: the fallback for a cohort without its own shipped file.
GENERIC = "generic"

MIN_ATTRIBUTES = 2
MIN_TEXTS, MAX_TEXTS = 1, 8
MAX_WORDS = 60
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ENTRY_KEYS = ("attribute", "texts")
HOW_TO_GIVE = "set pretrain.attributes in config.yaml to your own file (format: pipeline/data/hlss/SOURCES.md)"


class HlssAttributeError(PipelineError):
    """An attribute file that cannot be used; the message names the file and lists every problem, one per line."""

    def __init__(self, source: str | Path, problems: Sequence[str]):
        self.source = str(source)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"HLSS attribute file '{self.source}':\n{lines}")


@dataclass(frozen=True)
class Attribute:
    """One visual attribute: a snake_case name and the sentences that describe it."""

    name: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class HlssAttributes:
    """A validated attribute file: level -> attributes in file order (the order of the head rows)."""

    source: str
    levels: dict[str, tuple[Attribute, ...]]

    def _level(self, level: str) -> tuple[Attribute, ...]:
        if level not in self.levels:
            raise KeyError(f"unknown HLSS level '{level}' (levels: {', '.join(LEVELS)})")
        return self.levels[level]

    def names(self, level: str) -> list[str]:
        return [a.name for a in self._level(level)]

    def texts(self, level: str) -> list[list[str]]:
        return [list(a.texts) for a in self._level(level)]

    def sizes(self) -> dict[str, int]:
        """Attributes per level: the output size of each head."""
        return {level: len(self.levels[level]) for level in LEVELS}

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """The file format; `parse_hlss_attributes(a.to_json(), ...)` gives back an equal object."""
        return {
            level: [{"attribute": a.name, "texts": list(a.texts)} for a in self.levels[level]] for level in LEVELS
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON: the same descriptions in the same order give the same digest."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- validation ---------------------------------------------------------------------------------------------------


def _same_text(text: str) -> str:
    """What two texts are compared as: case and spacing do not make a sentence a different description."""
    return " ".join(text.split()).casefold()


def _check_texts(where: str, texts: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(texts, list):
        problems.append(f"{where}: 'texts' must be a list of strings, got {type(texts).__name__}")
        return ()
    if not MIN_TEXTS <= len(texts) <= MAX_TEXTS:
        problems.append(f"{where}: has {len(texts)} texts (need {MIN_TEXTS}-{MAX_TEXTS})")
    seen: dict[str, int] = {}
    for i, text in enumerate(texts, 1):
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: text {i} must be a non-empty string, got {text!r}")
            continue
        words = len(text.split())
        if words > MAX_WORDS:
            problems.append(f"{where}: text {i} has {words} words (at most {MAX_WORDS})")
        key = _same_text(text)
        if key in seen:
            problems.append(f"{where}: text {i} duplicates text {seen[key]}")
        else:
            seen[key] = i
    return tuple(t for t in texts if isinstance(t, str))


def _check_entry(level: str, index: int, entry: Any, problems: list[str]) -> Attribute | None:
    where = f"{level}[{index}]"
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be an object with keys {list(ENTRY_KEYS)}, got {type(entry).__name__}")
        return None
    name = entry.get("attribute")
    if isinstance(name, str):
        where = f"{where} '{name}'"
    unknown = sorted(set(entry) - set(ENTRY_KEYS), key=str)
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown} (allowed: {list(ENTRY_KEYS)})")
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if missing:
        problems.append(f"{where}: missing key(s) {missing}")
    if "attribute" in entry and not (isinstance(name, str) and NAME_RE.match(name)):
        problems.append(f"{where}: attribute name {name!r} is not snake_case ({NAME_RE.pattern})")
    texts = _check_texts(where, entry["texts"], problems) if "texts" in entry else ()
    return Attribute(name, texts) if isinstance(name, str) else None


def _check_level(level: str, entries: Any, problems: list[str]) -> tuple[Attribute, ...]:
    if not isinstance(entries, list):
        problems.append(f"{level}: must be a list of attributes, got {type(entries).__name__}")
        return ()
    if len(entries) < MIN_ATTRIBUTES:
        problems.append(f"{level}: has {len(entries)} attribute(s) (need at least {MIN_ATTRIBUTES})")
    attrs = [a for i, e in enumerate(entries) if (a := _check_entry(level, i, e, problems)) is not None]
    for name in _duplicates(a.name for a in attrs):
        problems.append(f"{level}: attribute name '{name}' is used more than once")
    return tuple(attrs)


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for name in names:
        if name in seen and name not in dups:
            dups.append(name)
        seen.add(name)
    return dups


def parse_hlss_attributes(obj: Any, source: str) -> HlssAttributes:
    """Validate a decoded attribute file; every problem is collected and raised together in one HlssAttributeError."""
    if not isinstance(obj, dict):
        raise HlssAttributeError(source, [f"top level must be an object with keys {list(LEVELS)}, "
                                          f"got {type(obj).__name__}"])
    problems: list[str] = []
    unknown = sorted(set(obj) - set(LEVELS), key=str)
    if unknown:
        problems.append(f"unknown top-level key(s) {unknown} (allowed: {list(LEVELS)})")
    levels: dict[str, tuple[Attribute, ...]] = {}
    for level in LEVELS:
        if level not in obj:
            problems.append(f"missing level '{level}'")
            continue
        levels[level] = _check_level(level, obj[level], problems)
    if problems:
        raise HlssAttributeError(source, problems)
    return HlssAttributes(str(source), levels)


# --- files --------------------------------------------------------------------------------------------------------


def load_hlss_attributes(path: str | Path) -> HlssAttributes:
    """Read and validate an attribute file; unreadable or malformed JSON is an HlssAttributeError naming the path."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HlssAttributeError(path, [f"cannot read the file: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise HlssAttributeError(path, [f"not UTF-8 text: {e}"]) from e
    except json.JSONDecodeError as e:
        raise HlssAttributeError(path, [f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"]) from e
    return parse_hlss_attributes(obj, str(path))


def write_hlss_attributes(dest: str | Path, attrs: HlssAttributes) -> None:
    """Write `attrs` atomically; validated first so a written file always loads again."""
    obj = attrs.to_json()
    parse_hlss_attributes(obj, str(dest))
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def shipped_attribute_file(name: str) -> Path | None:
    """The shipped file for a cohort or task name ("tcga_nsclc", "demo"), or None; names are never paths."""
    return shipped_file(SHIPPED_KIND, name)


def resolve_attribute_file(given: str | Path | None, cohort: str | None) -> Path:
    """Which file builds the heads: the given one (must exist), else the cohort's shipped file, else generic.json.

    The generic fallback works for any H&E cohort but knows nothing of its subtypes, so it is logged as a warning.
    """
    own = given_file(given, "file", "pretrain.attributes in config.yaml",
                     lambda message: HlssAttributeError(Path(str(given)).expanduser(), [f"{message}; {HOW_TO_GIVE}"]))
    if own is not None:
        return own
    if cohort:
        shipped = shipped_attribute_file(cohort)
        if shipped is not None:
            return shipped
    generic = shipped_attribute_file(GENERIC)
    if generic is None:
        raise HlssAttributeError(SHIPPED_DIR / f"{GENERIC}.json", ["the shipped generic file is missing"])
    what = f"cohort '{cohort}'" if cohort else "this run (no cohort name)"
    log.warning("no HLSS attribute file for %s; using the generic descriptions %s. To describe your cohort, %s",
                what, generic, HOW_TO_GIVE)
    return generic


# --- embeddings ---------------------------------------------------------------------------------------------------


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed_attributes(backbone: Backbone, attrs: HlssAttributes, batch_size: int = 64) -> dict[str, np.ndarray]:
    """level -> [A, D] float32 unit rows: each the normalised mean of its attribute's normalised text embeddings.

    Texts are normalised before averaging so a long sentence with a large raw norm does not outvote the others
    (`encode_texts` returns raw, unnormalised tower outputs). One encode call per level.
    """
    out: dict[str, np.ndarray] = {}
    for level in LEVELS:
        groups = attrs.texts(level)
        flat = [t for texts in groups for t in texts]
        from pipeline.features.text import encode_texts  # torch: only when embedding (the workflow reads this module)

        emb = _unit_rows(np.asarray(encode_texts(backbone, flat, batch_size), dtype=np.float64))
        bounds = np.cumsum([0] + [len(texts) for texts in groups])
        means = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
        out[level] = _unit_rows(means).astype(np.float32)
    return out
