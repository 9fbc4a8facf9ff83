"""Survival-attribute prompts (HiLa): per level, K sentences that each describe one prognostic attribute.

A file is JSON with two levels, `region` (what is seen at 5x) and `patch` (20x), each a list of the same number K
of attributes:

    {"region": [{"attribute": "necrosis", "text": "large areas of tumour necrosis", "risk": "higher"}, ...],
     "patch":  [{"attribute": "mitoses", "text": "many mitotic figures in tumour cells", "risk": "higher"}, ...]}

`attribute` is a short unique name (the tables show it), `text` what the text tower reads, and `risk` whether the
attribute marks worse (`higher`) or better (`lower`) prognosis: HiLa learns without it; the training-free
`prompt_risk` baseline adds the attributes' similarities with this sign. Both levels need the same K because Mutual
Contrastive Learning pairs attribute k of one level with attribute k of the other, so attribute k should describe
the same property at both scales. The text-embeddings file stores the levels as its two "classes".
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic

log = logging.getLogger(__name__)

LEVELS = ("region", "patch")  # region = 5x, patch = 20x: HiLa's names, the text-embedding file's group order
RISKS = {"higher": 1.0, "lower": -1.0}


class AttributePromptError(PipelineError):
    """An attribute prompt file is unusable; the message names the file and every problem."""


@dataclass(frozen=True)
class Attribute:
    name: str
    text: str
    risk: str

    @property
    def sign(self) -> float:
        return RISKS[self.risk]


@dataclass(frozen=True)
class AttributePrompts:
    source: str
    levels: dict[str, tuple[Attribute, ...]]

    @property
    def labels(self) -> list[str]:
        """The groups of the text-embeddings file: the levels, region first."""
        return list(LEVELS)

    @property
    def k(self) -> int:
        return len(self.levels[LEVELS[0]])

    def group_texts(self) -> list[list[str]]:
        return [[a.text for a in self.levels[level]] for level in LEVELS]

    def signs(self) -> list[float]:
        """Risk direction of every text, region texts first."""
        return [a.sign for level in LEVELS for a in self.levels[level]]

    def names(self) -> list[str]:
        return [a.name for level in LEVELS for a in self.levels[level]]

    def to_json_obj(self) -> dict[str, list[dict[str, str]]]:
        return {lv: [{"attribute": a.name, "text": a.text, "risk": a.risk} for a in self.levels[lv]] for lv in LEVELS}


def is_attribute_file(obj: Any) -> bool:
    """Whether parsed JSON is in this format (levels holding lists) rather than HiVE-MIL's {class: {term: text}}."""
    return isinstance(obj, dict) and set(obj) == set(LEVELS) and all(isinstance(v, list) for v in obj.values())


def _level_problems(level: str, items: Any) -> tuple[list[str], tuple[Attribute, ...]]:
    if not isinstance(items, list) or len(items) < 2:
        return [f"'{level}' must be a list of at least 2 attributes"], ()
    problems, found = [], []
    for i, item in enumerate(items):
        where = f"{level}[{i}]"
        if not isinstance(item, dict) or set(item) != {"attribute", "text", "risk"}:
            problems.append(f"{where}: expected exactly the keys attribute, text, risk; got {item!r}"[:200])
            continue
        name, text, risk = (str(item[k]).strip() for k in ("attribute", "text", "risk"))
        if not name or not text:
            problems.append(f"{where}: empty attribute name or text")
        if risk not in RISKS:
            problems.append(f"{where} ({name}): risk must be one of {sorted(RISKS)}, got {risk!r}")
        found.append(Attribute(name, text, risk))
    names = [a.name for a in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"'{level}': attribute name(s) listed more than once: {dup}")
    return problems, tuple(found)


def parse_attribute_prompts(text: str, source: str) -> AttributePrompts:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise AttributePromptError(f"attribute prompt file {source}: not valid JSON (line {err.lineno}: {err.msg})") from err
    if not isinstance(obj, dict) or set(obj) != set(LEVELS):
        raise AttributePromptError(
            f"attribute prompt file {source}: expected exactly the levels {list(LEVELS)}, got "
            f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__}"
        )
    problems: list[str] = []
    levels: dict[str, tuple[Attribute, ...]] = {}
    for level in LEVELS:
        level_problems, levels[level] = _level_problems(level, obj[level])
        problems += level_problems
    sizes = {level: len(v) for level, v in levels.items()}
    if not problems and len(set(sizes.values())) != 1:
        problems.append(f"both levels need the same number of attributes (MCL pairs them), got {sizes}")
    if problems:
        listed = "\n  - ".join(problems)
        raise AttributePromptError(f"attribute prompt file {source}: {len(problems)} problem(s):\n  - {listed}")
    return AttributePrompts(source, levels)


def load_attribute_prompts(path: PathLike) -> AttributePrompts:
    path = Path(path)
    if not path.exists():
        raise AttributePromptError(f"attribute prompt file {path}: no such file")
    return parse_attribute_prompts(path.read_text(encoding="utf-8"), str(path))


def check_attribute_prompts(path: PathLike, out: PathLike | None = None) -> AttributePrompts:
    """Validate, and write the checked copy the later stages read when `out` is given."""
    prompts = load_attribute_prompts(path)
    if out is not None:
        write_text_atomic(out, json.dumps(prompts.to_json_obj(), indent=2, ensure_ascii=False) + "\n")
    log.info("attribute prompt file %s: %d attributes per level", path, prompts.k)
    return prompts


def read_json(path: PathLike) -> Any:
    """The parsed file (to choose between the two prompt formats); None when it is not readable JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
