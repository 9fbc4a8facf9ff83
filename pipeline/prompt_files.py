"""Text prompts in HiVE-MIL's format: loading, validation and the shipped files.

A prompt file is JSON `{class: {term: explanation}}` with, per class, 4 coarse descriptions (what a pathologist
sees at 5x) followed by 12 fine ones (20x), three per coarse description in parent order: fine entry j belongs
to coarse entry j // 3. Key order carries meaning (class order = label order, entry order = hierarchy), so the
validator checks order and rejects duplicate keys, which plain `json.load` would silently merge.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic
from pipeline.shipped import resolve_shipped, shipped_dir, shipped_files

log = logging.getLogger(__name__)

#: HiVE-MIL's prompt layout, the one home of these numbers: per class 4 coarse (5x) texts, each with 3 fine (20x)
#: texts; a class reads 4 coarse then 12 fine entries in file order.
COARSE_PER_CLASS = 4
FINE_PER_COARSE = 3
FINE_PER_CLASS = COARSE_PER_CLASS * FINE_PER_COARSE
TEXTS_PER_CLASS = COARSE_PER_CLASS + FINE_PER_CLASS
PROMPTS_DIR = shipped_dir("prompts")
# A CLIP-style text tower reads 77 tokens; 16 go to the learnable context and 2 to start/end tokens. Longer
# "term: explanation" texts are cut by the tokenizer, so warn well before that (words are ~1.3-2 tokens).
WARN_WORDS = 35


class PromptError(PipelineError):
    """A prompt file is unusable; the message names the file and every problem found."""


@dataclass(frozen=True)
class ClassPrompts:
    """One class: coarse (5x) and fine (20x) (term, explanation) pairs; fine[j] refines coarse[j // 3]."""

    name: str
    coarse: tuple[tuple[str, str], ...]
    fine: tuple[tuple[str, str], ...]

    def texts(self) -> list[str]:
        """The 16 strings the text encoder reads, as "term: explanation", coarse first then fine."""
        return [f"{term}: {explanation}" for term, explanation in self.coarse + self.fine]

    def parent_of_fine(self) -> list[int]:
        """Index of each fine entry's coarse parent."""
        return [j // FINE_PER_COARSE for j in range(len(self.fine))]


@dataclass(frozen=True)
class PromptSet:
    """All classes of a prompt file, in file (= label) order."""

    source: str
    classes: tuple[ClassPrompts, ...]

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_json_obj(self) -> dict[str, dict[str, str]]:
        """Back to HiVE-MIL's `{class: {term: explanation}}` shape, order preserved."""
        return {c.name: dict(c.coarse + c.fine) for c in self.classes}


def shipped_prompt_files() -> dict[str, Path]:
    """Task name -> prompt file shipped in pipeline/data/prompts/."""
    return shipped_files("prompts")


def resolve_prompt_file(task: str, override: str | PathLike = "") -> Path:
    """The prompt file for a task: `override` when set, else the shipped `{task}.json`."""
    return resolve_shipped("prompts", task, override, what="prompt file", setting="the task's `prompts`",
                           hint="set the task's `prompts:` to a JSON file in HiVE-MIL's format", error=PromptError)


class _Pairs(list):
    """A JSON object kept as its ordered (key, value) list, so duplicate keys stay visible."""


def _problems_of_class(name: str, value: Any, n_coarse: int, n_fine: int) -> tuple[list[str], ClassPrompts | None]:
    where = f"class '{name}'"
    if not isinstance(value, _Pairs):
        return [f"{where}: expected an object of term: explanation entries, got {type(value).__name__}"], None
    problems: list[str] = []
    expected = n_coarse * (1 + n_fine)
    if len(value) != expected:
        problems.append(
            f"{where}: {len(value)} entries, expected {expected} "
            f"({n_coarse} coarse 5x descriptions, then {n_coarse * n_fine} fine 20x ones, {n_fine} per coarse)"
        )
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for pos, (term, explanation) in enumerate(value):
        label = f"{where} entry {pos} ('{term}')"
        if term.strip() in seen:
            problems.append(f"{label}: term repeated within the class")
        seen.add(term.strip())
        if not term.strip():
            problems.append(f"{where} entry {pos}: empty term")
        if not isinstance(explanation, str):
            problems.append(f"{label}: explanation must be a string, got {type(explanation).__name__}")
            continue
        if not explanation.strip():
            problems.append(f"{label}: empty explanation")
        words = len(f"{term}: {explanation}".split())
        if words > WARN_WORDS:
            log.warning("%s: %d words; a CLIP text tower may truncate it", label, words)
        pairs.append((term.strip(), explanation.strip()))
    if problems:
        return problems, None
    return [], ClassPrompts(name, tuple(pairs[:n_coarse]), tuple(pairs[n_coarse:]))


def parse_prompts(
    text: str,
    source: str,
    labels: Sequence[str] | None = None,
    n_coarse: int = COARSE_PER_CLASS,
    n_fine: int = FINE_PER_COARSE,
) -> PromptSet:
    """Validate prompt JSON text; raise PromptError listing every problem (structure, counts, class order)."""
    try:
        obj = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise PromptError(f"prompt file {source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    if not isinstance(obj, _Pairs) or not obj:
        raise PromptError(f"prompt file {source}: expected a non-empty object {{class: {{term: explanation}}}}")
    problems: list[str] = []
    names = [name for name, _ in obj]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"class(es) listed more than once: {dup}")
    if labels is not None:
        labels = list(labels)
        missing = [lab for lab in labels if lab not in names]
        extra = [n for n in names if n not in labels]
        if missing:
            problems.append(f"class(es) {missing} of the labels have no prompts")
        if extra:
            problems.append(f"class(es) {extra} are not among the labels {labels}")
        if not missing and not extra and not dup and names != labels:
            problems.append(f"classes are in the order {names}, but the label order is {labels}; "
                            "reorder the file (class i of the file must be label i)")
    classes = []
    for name, value in obj:
        class_problems, parsed = _problems_of_class(name, value, n_coarse, n_fine)
        problems.extend(class_problems)
        if parsed is not None:
            classes.append(parsed)
    if problems:
        listed = "\n  - ".join(problems)
        raise PromptError(f"prompt file {source}: {len(problems)} problem(s):\n  - {listed}")
    return PromptSet(source, tuple(classes))


def load_prompts(
    path: PathLike, labels: Sequence[str] | None = None, n_coarse: int = COARSE_PER_CLASS, n_fine: int = FINE_PER_COARSE
) -> PromptSet:
    """Read and validate a prompt file (see `parse_prompts`)."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"prompt file {path}: no such file")
    return parse_prompts(path.read_text(encoding="utf-8"), str(path), labels, n_coarse, n_fine)


def check_prompts(path: PathLike, labels: Sequence[str] | None, out: PathLike | None = None) -> PromptSet:
    """Validate a prompt file against the label order and, if `out` is given, write the checked copy there."""
    prompts = load_prompts(path, labels)
    if out is not None:
        write_text_atomic(out, json.dumps(prompts.to_json_obj(), indent=2, ensure_ascii=False) + "\n")
    log.info("prompt file %s: %d classes %s, %d texts each", path, len(prompts.classes), prompts.labels,
             COARSE_PER_CLASS * (1 + FINE_PER_COARSE))
    return prompts
