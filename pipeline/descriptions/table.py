"""descriptions.csv: one row per case, one column per question of the task's question set.

Columns are `case_id` and each field of the question set; a cell is one of the field's allowed answers or
"Unknown" (a blank cell means "Unknown"). The descriptions stage writes it (from the LLM, or checked from a user's
own table of the same shape), and the FiVE methods read it through `FineGrainedLabels`, which joins it to the
task's slides by case. Rows that cannot be used are listed with the reason in the failures table instead, and the
other cases go on.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.descriptions.questions import CASE_COLUMN, UNKNOWN, QuestionSet, answers_problems, load_questions
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_text_atomic

FAILURE_COLUMNS = [CASE_COLUMN, "reason"]


class DescriptionsError(PipelineError):
    """A descriptions table cannot be read as a whole (wrong columns, not a CSV)."""


def write_descriptions(path: PathLike, questions: QuestionSet, rows: Mapping[str, Mapping[str, str]]) -> None:
    """Cases in sorted order, fields in question-set order (atomic)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([CASE_COLUMN, *questions.fields])
    for case in sorted(rows):
        writer.writerow([case, *(rows[case].get(f, UNKNOWN) for f in questions.fields)])
    write_text_atomic(path, buf.getvalue())


def write_failures(path: PathLike, failures: Mapping[str, str]) -> None:
    """case_id,reason of every case without a usable description (atomic; header only when none)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    for case in sorted(failures):
        writer.writerow([case, failures[case]])
    write_text_atomic(path, buf.getvalue())


def read_descriptions(path: PathLike, questions: QuestionSet) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(case -> answers, case -> why its row was refused). A wrong header refuses the whole table."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsError(f"descriptions table {path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        expected = [CASE_COLUMN, *questions.fields]
        missing = [c for c in expected if c not in header]
        extra = [c for c in header if c not in expected]
        if missing or extra:
            raise DescriptionsError(
                f"descriptions table {path}: columns must be {expected} (the question set {questions.source}); "
                f"missing {missing}, unknown {extra}"
            )
        rows: dict[str, dict[str, str]] = {}
        failures: dict[str, str] = {}
        for line, raw in enumerate(reader, start=2):
            cells = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            case = cells.get(CASE_COLUMN, "")
            if not case:
                raise DescriptionsError(f"descriptions table {path}, line {line}: empty case_id")
            if case in rows or case in failures:
                failures[case] = f"listed more than once in {path}"
                rows.pop(case, None)
                continue
            answers = {f: cells[f] or UNKNOWN for f in questions.fields}
            canonical, problems = answers_problems(questions, answers)
            if problems:
                failures[case] = f"{path}, line {line}: " + "; ".join(problems)
            else:
                rows[case] = canonical
    return rows, failures


@dataclass
class FineGrainedLabels:
    """A task's question set and each slide's description (the answers of its case), for the FiVE methods.

    `by_slide` holds only slides whose case has a description; `known(slide)` says whether one does.
    """

    questions: QuestionSet
    by_slide: dict[str, dict[str, str]] = field(default_factory=dict)

    def of(self, slide_id: str) -> dict[str, str] | None:
        return self.by_slide.get(slide_id)


def load_fine_grained(
    questions_json: PathLike, descriptions_csv: PathLike, slide_cases: Mapping[str, str],
    labels: Sequence[str] | None = None,
) -> FineGrainedLabels:
    """The question set (checked against the task's class order) and the descriptions of the given slides' cases.

    Cases the table refused were listed by the descriptions stage; they get no description here (FiVE then
    trains their slides on the class description alone)."""
    questions = load_questions(questions_json, labels)
    rows, _ = read_descriptions(descriptions_csv, questions)
    return FineGrainedLabels(questions, {s: rows[c] for s, c in slide_cases.items() if c in rows})
