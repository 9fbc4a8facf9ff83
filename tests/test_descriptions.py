"""Question sets, the LLM client against a loopback OpenAI-compatible server (dropped connection, timeout, 429,
malformed answers, cache, key hygiene), descriptions tables, and the descriptions command end to end."""

from __future__ import annotations

import json
import logging
import re

import pytest

from pipeline.cli import main
from pipeline.demo_cohort import demo_slides
from pipeline.demo_reports import SENTENCES, write_demo_reports
from pipeline.descriptions.extract import describe_reports, run_descriptions
from pipeline.descriptions.llm import ChatClient, ChatSettings, LLMError, LLMUnavailable, read_key
from pipeline.descriptions.questions import (
    UNKNOWN,
    QuestionError,
    load_questions,
    parse_questions,
    shipped_question_sets,
)
from pipeline.descriptions.table import DescriptionsError, read_descriptions
from pipeline.prompt_files import shipped_prompt_files
from pipeline.reports.collect import read_report_table

from llm_server import Fault, LlmServer, last_user_message, user_messages

DEMO = load_questions(shipped_question_sets()["demo"])
CLASSES = ["regular_glands", "atypical_glands", "small_cell", "large_cell"]


def reader(body: dict) -> str:
    """A faithful 'LLM' for the demo reports: each field's answer is the value whose sentence the report holds."""
    report = user_messages(body)[0].split('"""')[1]  # the first user message holds the report
    return json.dumps({f: next((v for v, sentence in values.items() if sentence in report), UNKNOWN)
                       for f, values in SENTENCES.items()})


def client(server: LlmServer, key: str | None = None, **settings) -> ChatClient:
    waits: list[float] = []
    c = ChatClient(server.url, ChatSettings(model="local-test", **{"retries": 3, "backoff": 0.01, **settings}), key=key,
                   sleep=waits.append)
    c.waits = waits  # what the retries would have slept (the test does not wait)
    return c


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The demo cohort's report texts and its precomputed descriptions."""
    folder = tmp_path_factory.mktemp("demo_reports")
    write_demo_reports(folder / "reports.csv", folder / "descriptions.csv", demo_slides(CLASSES, 3), 7, DEMO)
    return read_report_table(folder / "reports.csv"), read_descriptions(folder / "descriptions.csv", DEMO)[0]


# --- question sets -------------------------------------------------------------------------------------------------


def test_shipped_question_sets_describe_their_tasks_classes_in_label_order():
    shipped = shipped_question_sets()
    assert {"demo", "tcga_nsclc", "tcga_brca", "tcga_rcc"} <= set(shipped)
    for task, path in shipped.items():
        labels = list(json.loads(shipped_prompt_files()[task].read_text()))
        questions = load_questions(path, labels)
        assert questions.labels == labels and len(questions.questions) >= 5
    nsclc = load_questions(shipped["tcga_nsclc"]).fields
    assert nsclc == ["differentiation", "spread_through_air_spaces", "vascular_invasion", "pleural_invasion",
                     "adjacent_invasion", "margins"]  # FiVE's six


def test_a_bad_question_set_lists_every_problem():
    bad = {"questions": [
        {"field": "grade", "name": "grade", "question": "Grade?", "answers": ["1", "unknown"]},
        {"field": "grade", "name": "g", "question": "Again?", "answers": ["a", "A"]},
        {"field": "case_id", "name": "", "question": "?", "answers": []}],
        "classes": {"B": "b", "A": "a"}}
    with pytest.raises(QuestionError) as err:
        parse_questions(json.dumps(bad), "bad.json", labels=["A", "B"])
    message = str(err.value)
    for expected in ["'Unknown' is always allowed", "field 'grade' is listed twice", "listed twice (case",
                     "other than 'case_id'", "label order are ['A', 'B']"]:
        assert expected in message, message
    q = DEMO.question("nuclear_size")
    assert q.canonical(" Large. ") == "large" and q.canonical("unknown") == UNKNOWN and q.canonical("huge") is None


# --- the LLM client ------------------------------------------------------------------------------------------------


def test_descriptions_from_the_llm_match_what_the_reports_say_with_deterministic_settings(tmp_path, demo_reports):
    texts, expected = demo_reports
    with LlmServer(reader) as server:
        rows, failures, counts = describe_reports(client(server), DEMO, texts, tmp_path / "cache")
    assert rows == expected and not failures and counts.requests == len(texts)
    body = server.requests[0].body
    assert body["temperature"] == 0 and body["top_p"] == 1 and body["seed"] == 0 and body["model"] == "local-test"
    assert body["response_format"] == {"type": "json_object"} and body["stream"] is False
    assert "Allowed answers: glands | solid sheets | Unknown" in last_user_message(body)


def test_the_client_survives_a_dropped_connection_429_a_timeout_and_a_garbled_body(tmp_path, demo_reports):
    texts, expected = demo_reports
    case = sorted(texts)[0]
    with LlmServer(reader) as server:
        server.fault(Fault("drop"), Fault("status", 429, retry_after="7"), Fault("sleep", seconds=0.6),
                     Fault("garbage"), Fault("status", 503))
        c = client(server, retries=5, timeout=0.3)
        rows, failures, counts = describe_reports(c, DEMO, {case: texts[case]}, tmp_path / "cache")
    assert rows == {case: expected[case]} and not failures
    assert len(server.requests) == 6  # five failures, then the answer
    assert len(c.waits) == 5 and c.waits[1] == 7.0  # Retry-After honoured, exponential backoff otherwise
    assert c.waits[4] > c.waits[0] > 0


def test_an_endpoint_that_keeps_failing_stops_with_what_happened(tmp_path):
    with LlmServer(reader) as server:
        server.fault(*[Fault("status", 500)] * 3)
        with pytest.raises(LLMUnavailable, match="failed 3 times in a row, last: HTTP 500"):
            describe_reports(client(server, retries=2), DEMO, {"C1": "The nuclei are small."}, tmp_path)
        with pytest.raises(LLMError, match="HTTP 404.*check llm.base_url"):
            ChatClient(server.url + "/nope", ChatSettings(model="m"), sleep=lambda s: None).complete([])


def test_a_malformed_answer_goes_back_with_what_was_wrong_and_is_then_accepted(tmp_path, demo_reports):
    texts, expected = demo_reports
    case = sorted(texts)[1]
    replies = iter(["Sure! The tumour forms glands.", json.dumps({**expected[case], "nuclear_size": "enormous"})])

    def sloppy(body: dict) -> str:
        return next(replies, None) or "```json\n" + reader(body) + "\n```"

    with LlmServer(sloppy) as server:
        rows, failures, counts = describe_reports(client(server), DEMO, {case: texts[case]}, tmp_path, attempts=3)
    assert rows == {case: expected[case]} and counts.requests == 3
    second = server.requests[1].body["messages"]
    assert second[-2] == {"role": "assistant", "content": "Sure! The tumour forms glands."}
    assert "not a JSON object" in second[-1]["content"]
    assert "'nuclear_size': 'enormous' is not one of small, medium, large, Unknown" in last_user_message(
        server.requests[2].body)


def test_a_case_without_a_valid_answer_fails_alone_and_answers_are_cached(tmp_path, demo_reports):
    texts, expected = demo_reports
    bad = sorted(texts)[2]

    def one_wrong(body: dict) -> str:
        return json.dumps({"growth_pattern": "maybe"}) if texts[bad].strip() in user_messages(body)[0] else reader(body)

    with LlmServer(one_wrong) as server:
        rows, failures, counts = describe_reports(client(server), DEMO, texts, tmp_path / "cache")
        assert set(failures) == {bad} and "no valid answer after 2 replies" in failures[bad]
        assert "'growth_pattern': 'maybe'" in failures[bad] and "no answer for 'lumens'" in failures[bad]
        assert rows == {c: v for c, v in expected.items() if c != bad}
        asked = len(server.requests)
        again, _, counts = describe_reports(client(server), DEMO, texts, tmp_path / "cache")
        assert len(server.requests) == asked + 2 and counts.from_cache == len(texts) - 1  # only the failed case
        changed = {**texts, sorted(texts)[0]: texts[sorted(texts)[0]] + " Nuclear atypia is marked."}
        before = len(server.requests)
        _, _, counts = describe_reports(client(server), DEMO, changed, tmp_path / "cache")
        assert len(server.requests) == before + 1 + 2  # the changed report, and the failed case again
    assert sorted(p.stem for p in (tmp_path / "cache").glob("*.json")) == sorted(c for c in texts if c != bad)


def test_the_key_is_sent_but_never_logged_or_shown(tmp_path, caplog, demo_reports):
    secret = "sk-test-" + "q7" * 12
    key_file = tmp_path / "key.txt"
    key_file.write_text(secret + "\n")
    texts, _ = demo_reports
    caplog.set_level(logging.DEBUG)
    with LlmServer(reader, key=secret) as server:
        server.fault(Fault("status", 502), Fault("drop"))
        c = client(server, key=read_key(key_file))
        rows, failures, _ = describe_reports(c, DEMO, dict(list(texts.items())[:2]), tmp_path / "cache")
        assert len(rows) == 2 and server.requests[0].headers["Authorization"] == f"Bearer {secret}"
        with pytest.raises(LLMError) as refused:
            client(server, key="wrong-key").complete([{"role": "user", "content": "hi"}])
    assert "check llm.key_file" in str(refused.value)
    seen = caplog.text + repr(c) + str(refused.value) + "".join(p.read_text() for p in (tmp_path / "cache").iterdir())
    assert secret not in seen and "wrong-key" not in seen and "key=set" in repr(c)
    with pytest.raises(LLMError, match="holds more than one line"):
        key_file.write_text("two\nlines")
        read_key(key_file)


# --- descriptions tables and the command -----------------------------------------------------------------------------


def test_a_users_descriptions_table_is_checked_row_by_row(tmp_path):
    table = tmp_path / "mine.csv"
    table.write_text("case_id,growth_pattern,lumens,nuclear_size,nuclear_density,nuclear_atypia\n"
                     "A,Glands,present,,sparse,mild\nB,glands,present,huge,sparse,mild\nA,glands,,,,\n"
                     "C,solid sheets,absent,small,dense,Unknown\n")
    rows, failures = read_descriptions(table, DEMO)
    assert rows == {"C": {"growth_pattern": "solid sheets", "lumens": "absent", "nuclear_size": "small",
                          "nuclear_density": "dense", "nuclear_atypia": UNKNOWN}}
    assert "listed more than once" in failures["A"] and "'nuclear_size': 'huge'" in failures["B"]
    table.write_text("case_id,growth_pattern,size\nA,glands,small\n")
    with pytest.raises(DescriptionsError, match=r"missing \['lumens'.*unknown \['size'\]"):
        read_descriptions(table, DEMO)


def test_the_descriptions_command_asks_the_llm_about_the_reports_stage_output(tmp_path, demo_reports):
    texts, expected = demo_reports
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slide_id,case_id,label\n" + "".join(f"s{i},{c},x\n" for i, c in enumerate(texts)) + "u,UNSEEN,x\n")
    table = tmp_path / "reports.csv"
    table.write_text("case_id,text\n" + "".join(f'{c},"{t}"\n' for c, t in texts.items()))
    assert main(["reports", "--source", "csv", "--sheet", str(sheet), "--table", str(table), "--texts",
                 str(tmp_path / "texts"), "--index", str(tmp_path / "reports" / "index.csv")]) == 0
    index = (tmp_path / "reports" / "index.csv").read_text()
    assert re.search(r"UNSEEN,none,csv,0,not in .*reports.csv", index)
    # the command writes the index and one text per case where it is told, nothing else
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == sorted(f"{c}.txt" for c in texts)
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["index.csv"]
    out = tmp_path / "out"
    with LlmServer(reader) as server:
        args = ["descriptions", "--questions", str(shipped_question_sets()["demo"]), "--labels", "glandular", "solid",
                "--out-questions", str(out / "questions.json"), "--out", str(out / "descriptions.csv"),
                "--failures", str(out / "failed.csv"), "--reports-index", str(tmp_path / "reports" / "index.csv"),
                "--cache-dir", str(out / "cache"), "--base-url", server.url, "--model", "local-test", "--backoff", "0"]
        assert main(args) == 0
        assert len(server.requests) == len(texts)
        assert main(args) == 0 and len(server.requests) == len(texts)  # a rerun asks nothing
    assert read_descriptions(out / "descriptions.csv", DEMO) == (expected, {})
    assert load_questions(out / "questions.json", ["glandular", "solid"]).fields == DEMO.fields
    assert (out / "failed.csv").read_text() == "case_id,reason\n"
    # a ready-made table (the demo's precomputed descriptions) gives the same file without any LLM
    run_descriptions(questions=DEMO, out_questions=out / "q2.json", out=out / "d2.csv", failures_out=out / "f2.csv",
                     from_csv=out / "descriptions.csv")
    assert (out / "d2.csv").read_text() == (out / "descriptions.csv").read_text()
