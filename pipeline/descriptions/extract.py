"""The descriptions stage: every case's report answered by the LLM (or a user's table checked), one row per case.

For each case with a report text the LLM gets the task's questions, each with its allowed answers, and must reply
with one JSON object {field: answer}; "Unknown" where the report is silent. An answer that is not JSON, misses a
field or gives an answer the question does not allow is sent back once more with what was wrong
(`answer_attempts` in all); a case that still has no valid answer is listed in the failures table with the reason,
and the other cases go on. Valid answers are cached per case (`{cache_dir}/{case}.json`, keyed by the model, the
question set and the report text), so a rerun asks nothing twice and an interrupted run resumes. An endpoint that
cannot be reached stops the stage (every case would fail); what is cached stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.descriptions.llm import ChatClient, LLMRefused
from pipeline.descriptions.questions import UNKNOWN, QuestionSet, answers_problems, write_questions
from pipeline.descriptions.table import read_descriptions, write_descriptions, write_failures
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, write_json_atomic
from pipeline.status import name_problem

log = logging.getLogger(__name__)

#: part of every cache key: a change to the instructions below asks again
PROMPT_VERSION = 1
SYSTEM_PROMPT = (
    "You read surgical pathology reports and answer questions about them. Answer every question with exactly one "
    f"of the answers it allows, spelled as given, or with \"{UNKNOWN}\" when the report does not settle it. Reply "
    "with a single JSON object that maps each question's field to its answer, and nothing else."
)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def user_prompt(questions: QuestionSet, report: str) -> str:
    """The report, then each question as `field: question Allowed answers: a | b | Unknown`."""
    lines = [f"- {q.field}: {q.question} Allowed answers: {' | '.join([*q.answers, UNKNOWN])}"
             for q in questions.questions]
    fields = ", ".join(f'"{f}"' for f in questions.fields)
    return (f"Pathology report:\n\"\"\"\n{report.strip()}\n\"\"\"\n\nQuestions:\n" + "\n".join(lines)
            + f"\n\nReply with one JSON object with exactly the keys {fields}.")


def parse_reply(reply: str, questions: QuestionSet) -> tuple[dict[str, str] | None, list[str]]:
    """(answers in their allowed spelling, []) or (None, what is wrong with the reply)."""
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        try:
            obj = json.loads(text[start : end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            obj = None
        if obj is None:
            return None, ["the reply is not a JSON object"]
    if not isinstance(obj, dict):
        return None, [f"the reply is a JSON {type(obj).__name__}, not an object"]
    answers, problems = answers_problems(questions, obj)
    return (answers, []) if not problems else (None, problems)


def cache_key(model: str, questions: QuestionSet, report: str) -> str:
    """What decides an answer: the model, the questions, the instructions and the report text."""
    digest = hashlib.sha256(report.encode()).hexdigest()
    raw = json.dumps([PROMPT_VERSION, model, questions.digest(), digest])
    return hashlib.sha256(raw.encode()).hexdigest()


def read_cached(path: Path, key: str, questions: QuestionSet) -> dict[str, str] | None:
    """A case's cached answers when they were made from the same key and still fit the questions."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    answers, problems = answers_problems(questions, entry.get("answers") or {})
    return None if problems else answers


@dataclass
class AskResult:
    answers: dict[str, str] | None
    reason: str = ""  # why there are none
    requests: int = 0


def ask_case(client: ChatClient, questions: QuestionSet, report: str, attempts: int = 2) -> AskResult:
    """Ask about one report; a malformed reply goes back with what was wrong, at most `attempts` replies."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_prompt(questions, report)}]
    problems: list[str] = []
    for n in range(1, attempts + 1):
        try:
            reply = client.complete(messages)
        except LLMRefused as err:
            return AskResult(None, str(err), n)
        answers, problems = parse_reply(reply, questions)
        if answers is not None:
            return AskResult(answers, "", n)
        log.warning("malformed answer (%s); asking again", "; ".join(problems))
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "That reply cannot be used: " + "; ".join(problems)
             + ". Reply again with only the JSON object, every field answered with an allowed answer or "
             + f"\"{UNKNOWN}\"."},
        ]
    return AskResult(None, f"no valid answer after {attempts} replies: " + "; ".join(problems), attempts)


@dataclass
class DescribeSummary:
    described: int
    from_cache: int
    failed: int
    requests: int


def describe_reports(
    client: ChatClient, questions: QuestionSet, reports: Mapping[str, str], cache_dir: PathLike,
    attempts: int = 2,
) -> tuple[dict[str, dict[str, str]], dict[str, str], DescribeSummary]:
    """(case -> answers, case -> failure reason, counts) for every case with a report text."""
    cache = Path(cache_dir)
    rows: dict[str, dict[str, str]] = {}
    failures: dict[str, str] = {}
    cached = requests = 0
    for i, case in enumerate(sorted(reports)):
        problem = name_problem(case)
        if problem:
            failures[case] = f"case id cannot name a cache file: {problem}"
            continue
        key = cache_key(client.settings.model, questions, reports[case])
        path = cache / f"{case}.json"
        answers = read_cached(path, key, questions)
        if answers is not None:
            rows[case] = answers
            cached += 1
            continue
        result = ask_case(client, questions, reports[case], attempts)
        requests += result.requests
        if result.answers is None:
            failures[case] = result.reason
            log.warning("case %s: %s", case, result.reason)
            continue
        rows[case] = result.answers
        write_json_atomic(path, {"key": key, "model": client.settings.model, "questions": questions.digest(),
                                 "answers": result.answers})
        log.info("case %s (%d/%d): %s", case, i + 1, len(reports), questions.describe(result.answers) or "all Unknown")
    return rows, failures, DescribeSummary(len(rows), cached, len(failures), requests)


def read_report_texts(index_csv: PathLike) -> dict[str, str]:
    """case -> report text of every case the reports stage found a report for (its index table)."""
    from pipeline.reports.collect import read_index

    return {row.case_id: Path(row.text_file).read_text(encoding="utf-8") for row in read_index(index_csv)
            if row.status == "ok"}


def run_descriptions(
    *, questions: QuestionSet, out_questions: PathLike, out: PathLike, failures_out: PathLike,
    from_csv: PathLike | None = None, reports_index: PathLike | None = None, client: ChatClient | None = None,
    cache_dir: PathLike | None = None, attempts: int = 2,
) -> dict[str, Any]:
    """The stage: the checked question set, descriptions.csv and the failures table, from a user's table or the LLM."""
    write_questions(out_questions, questions)
    if from_csv:
        rows, failures = read_descriptions(from_csv, questions)
        source = f"table {from_csv}"
    else:
        if reports_index is None or client is None or cache_dir is None:
            raise PipelineError("descriptions: give a descriptions table, or the reports index with an LLM endpoint")
        rows, failures, counts = describe_reports(client, questions, read_report_texts(reports_index), cache_dir,
                                                  attempts)
        source = f"LLM {client.settings.model} at {client.base_url}"
        log.info("%d described (%d from the cache), %d failed, %d requests", counts.described, counts.from_cache,
                 counts.failed, counts.requests)
    for case, reason in sorted(failures.items()):
        log.warning("case %s has no description: %s", case, reason)
    write_descriptions(out, questions, rows)
    write_failures(failures_out, failures)
    unknown = {f: sum(r[f] == UNKNOWN for r in rows.values()) for f in questions.fields}
    log.info("descriptions from %s: %d cases, %d without; Unknown per field: %s", source, len(rows), len(failures),
             unknown)
    return {"cases": len(rows), "failed": len(failures), "unknown": unknown}
