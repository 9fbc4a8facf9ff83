"""Question sets: what FiVE asks of every report of a task, the answers each question allows, and the class
descriptions the trained model is tested against.

A question set is JSON (`pipeline/data/questions/{task}.json` ships one per task; a task's `questions:` names
another)::

    {"about": "where the questions come from",
     "questions": [{"field": "differentiation", "name": "differentiation",
                    "question": "What is the differentiation of the lesion?",
                    "answers": ["well differentiated", "moderately differentiated", "poorly differentiated"]}, ...],
     "classes": {"LUAD": "lung adenocarcinoma: ...", "LUSC": "..."}}

`field` is the column of descriptions.csv, `name` what a description says before the answer
("differentiation: poorly differentiated"), `question` what the LLM is asked and, FiVE's choice, the text of that
field's query prompt. Every question also allows "Unknown" (the report is silent). `classes` lists one description
per class in label order. Key order carries meaning, so duplicate keys are refused as in the prompt files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic
from pipeline.shipped import resolve_shipped, shipped_dir, shipped_files

#: the answer of a question the report does not settle (FiVE's placeholder), allowed for every question
UNKNOWN = "Unknown"
#: joins the fields of a description, as FiVE joins its answers
SEPARATOR = "; "
QUESTIONS_DIR = shipped_dir("questions")
_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
#: descriptions.csv's id column; no field may take its name
CASE_COLUMN = "case_id"


class QuestionError(PipelineError):
    """A question set is unusable; the message names the file and every problem found."""


def normalise_answer(text: str) -> str:
    """An answer as compared with the allowed ones: case-folded, spaces collapsed, trailing full stop dropped."""
    return " ".join(str(text).split()).rstrip(".").casefold()


@dataclass(frozen=True)
class Question:
    """One field of a description and the answers it allows (UNKNOWN besides)."""

    field: str
    name: str
    question: str
    answers: tuple[str, ...]

    def canonical(self, answer: str) -> str | None:
        """The allowed spelling of `answer` (UNKNOWN included), or None when it is not an allowed answer."""
        wanted = normalise_answer(answer)
        for allowed in (*self.answers, UNKNOWN):
            if normalise_answer(allowed) == wanted:
                return allowed
        return None

    def phrase(self, answer: str) -> str:
        """What a description says for this field: "name: answer"."""
        return f"{self.name}: {answer}"


@dataclass(frozen=True)
class QuestionSet:
    """A task's questions, in file order, and its class descriptions in label order."""

    source: str
    questions: tuple[Question, ...]
    class_descriptions: tuple[tuple[str, str], ...]  # (class, description) in label order
    about: str = ""

    @property
    def fields(self) -> list[str]:
        return [q.field for q in self.questions]

    @property
    def labels(self) -> list[str]:
        return [c for c, _ in self.class_descriptions]

    @property
    def class_texts(self) -> list[str]:
        return [d for _, d in self.class_descriptions]

    @property
    def prompts(self) -> list[str]:
        """The question texts: FiVE's fixed query prompts, one per field in file order."""
        return [q.question for q in self.questions]

    def question(self, field: str) -> Question:
        for q in self.questions:
            if q.field == field:
                return q
        raise KeyError(field)

    def describe(self, answers: Mapping[str, str], fields: Sequence[str] | None = None) -> str:
        """A description's text: the known answers of `fields` (default: every field, in file order) as
        "name: answer" joined by "; "; fields answered UNKNOWN are left out (FiVE drops them)."""
        order = self.fields if fields is None else list(fields)
        parts = [self.question(f).phrase(answers[f]) for f in order if answers.get(f, UNKNOWN) != UNKNOWN]
        return SEPARATOR.join(parts)

    def digest(self) -> str:
        """A hash of what the LLM is asked (fields, questions, answers): a changed question invalidates its cache."""
        payload = [[q.field, q.question, list(q.answers)] for q in self.questions]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "about": self.about,
            "questions": [{"field": q.field, "name": q.name, "question": q.question, "answers": list(q.answers)}
                          for q in self.questions],
            "classes": dict(self.class_descriptions),
        }


class _Pairs(list):
    """A JSON object kept as its ordered (key, value) list, so duplicate keys stay visible."""


def _as_dict(pairs: Any) -> Any:
    return dict(pairs) if isinstance(pairs, _Pairs) else pairs


def _question_problems(i: int, raw: Any, seen: set[str]) -> tuple[list[str], Question | None]:
    where = f"question {i}"
    if not isinstance(raw, _Pairs):
        return [f"{where}: expected an object with field, name, question, answers"], None
    keys = [k for k, _ in raw]
    item = dict(raw)
    problems = [f"{where}: key '{k}' given twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    unknown = sorted(set(item) - {"field", "name", "question", "answers"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {unknown}")
    field = item.get("field")
    if not isinstance(field, str) or not _FIELD.match(field) or field == CASE_COLUMN:
        problems.append(f"{where}: field must be a lower-case identifier other than '{CASE_COLUMN}', got {field!r}")
    elif field in seen:
        problems.append(f"{where}: field '{field}' is listed twice")
    else:
        seen.add(field)
        where = f"question {i} ('{field}')"
    for key in ("name", "question"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            problems.append(f"{where}: '{key}' must be a non-empty string")
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        problems.append(f"{where}: 'answers' must be a non-empty list of non-empty strings")
        answers = []
    folded = [normalise_answer(a) for a in answers]
    if normalise_answer(UNKNOWN) in folded:
        problems.append(f"{where}: '{UNKNOWN}' is always allowed; do not list it among the answers")
    dup = sorted({a for a in folded if folded.count(a) > 1})
    if dup:
        problems.append(f"{where}: answers {dup} listed twice (case and spaces do not count)")
    if any(";" in a for a in answers):
        problems.append(f"{where}: an answer may not contain ';' (it separates the fields of a description)")
    if problems:
        return problems, None
    return [], Question(field, item["name"].strip(), item["question"].strip(), tuple(a.strip() for a in answers))


def parse_questions(text: str, source: str, labels: Sequence[str] | None = None) -> QuestionSet:
    """Validate question-set JSON; raise QuestionError listing every problem (structure, fields, answers, classes)."""
    try:
        obj = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise QuestionError(f"question set {source}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    if not isinstance(obj, _Pairs):
        raise QuestionError(f"question set {source}: expected an object with 'questions' and 'classes'")
    top = dict(obj)
    problems: list[str] = []
    unknown = sorted(set(top) - {"about", "questions", "classes"})
    if unknown:
        problems.append(f"unknown key(s) {unknown} (expected about, questions, classes)")
    raw_questions = top.get("questions")
    questions: list[Question] = []
    if not isinstance(raw_questions, list) or not raw_questions:
        problems.append("'questions' must be a non-empty list")
    else:
        seen: set[str] = set()
        for i, raw in enumerate(raw_questions):
            found, q = _question_problems(i, raw, seen)
            problems += found
            if q is not None:
                questions.append(q)
    classes = top.get("classes")
    pairs: list[tuple[str, str]] = []
    if not isinstance(classes, _Pairs) or len(classes) < 2:
        problems.append("'classes' must be an object {class: description} with at least two classes")
    else:
        names = [c for c, _ in classes]
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            problems.append(f"class(es) listed more than once: {dup}")
        for name, description in classes:
            if not isinstance(description, str) or not description.strip():
                problems.append(f"class '{name}': the description must be a non-empty string")
            else:
                pairs.append((name, " ".join(description.split())))
        if labels is not None and names != list(labels):
            problems.append(f"classes are {names}, but the task's classes in label order are {list(labels)}")
    about = top.get("about", "")
    if not isinstance(about, str):
        problems.append("'about' must be a string")
    if problems:
        listed = "\n  - ".join(problems)
        raise QuestionError(f"question set {source}: {len(problems)} problem(s):\n  - {listed}")
    return QuestionSet(source, tuple(questions), tuple(pairs), about)


def load_questions(path: PathLike, labels: Sequence[str] | None = None) -> QuestionSet:
    path = Path(path)
    if not path.is_file():
        raise QuestionError(f"question set {path}: no such file")
    return parse_questions(path.read_text(encoding="utf-8"), str(path), labels)


def shipped_question_sets() -> dict[str, Path]:
    """Task name -> question set shipped in pipeline/data/questions/."""
    return shipped_files("questions")


def resolve_question_file(task: str, override: str | PathLike = "") -> Path:
    """A task's question set: `override` when set, else the shipped `{task}.json`."""
    return resolve_shipped("questions", task, override, what="question set", setting="the task's `questions`",
                           hint="set the task's `questions:` to a JSON file (format in "
                           "pipeline/descriptions/questions.py)", error=QuestionError)


def write_questions(path: PathLike, questions: QuestionSet) -> None:
    """The checked copy the training jobs read (atomic)."""
    write_text_atomic(path, json.dumps(questions.to_json_obj(), indent=2, ensure_ascii=False) + "\n")


def answers_problems(questions: QuestionSet, answers: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Answers mapped onto the allowed spellings, and what is wrong with them (a missing or extra field, an
    answer a question does not allow); the mapping is only complete when the list is empty."""
    problems: list[str] = []
    out: dict[str, str] = {}
    for q in questions.questions:
        if q.field not in answers:
            problems.append(f"no answer for '{q.field}'")
            continue
        value = answers[q.field]
        canonical = q.canonical(value) if isinstance(value, str) else None
        if canonical is None:
            allowed = ", ".join([*q.answers, UNKNOWN])
            problems.append(f"'{q.field}': {value!r} is not one of {allowed}")
        else:
            out[q.field] = canonical
    extra = sorted(set(answers) - set(questions.fields))
    if extra:
        problems.append(f"unknown field(s) {extra}")
    return out, problems
