"""The descriptions stage of one task: each case's report answered to the task's question set (FiVE).

Writes the checked question set (--out-questions), descriptions.csv (--out: case_id + one column per question,
an allowed answer or "Unknown") and the cases without a usable description with the reason (--failures). Either
--from-csv checks a table of that shape you made yourself (no LLM), or the LLM behind --base-url (an
OpenAI-compatible /chat/completions endpoint, e.g. a local vLLM or llama.cpp server) answers every report of
--reports-index, at temperature 0 with a fixed seed, retried with backoff on dropped connections, timeouts, 429 and
5xx; valid answers are cached per case in --cache-dir, so a rerun asks nothing twice. The key is read from
--key-file and never printed.
"""

from __future__ import annotations

import argparse

NAME = "descriptions"
HELP = "fine-grained report descriptions of one task (an LLM, or your own table), cached per case"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, help="the task's question set (JSON)")
    parser.add_argument("--labels", nargs="+", required=True, help="the task's classes in label order")
    parser.add_argument("--out-questions", required=True, help="checked copy of the question set to write")
    parser.add_argument("--out", required=True, help="descriptions.csv to write")
    parser.add_argument("--failures", required=True, help="case_id,reason table of cases without a description")
    parser.add_argument("--from-csv", default="", help="your own descriptions table (case_id + one column per field)")
    parser.add_argument("--reports-index", default="", help="the reports stage's index.csv (LLM mode)")
    parser.add_argument("--cache-dir", default="", help="per-case answer cache (LLM mode)")
    g = parser.add_argument_group("LLM endpoint (OpenAI-compatible chat completions)")
    g.add_argument("--base-url", default="", help="e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--model", default="", help="the model name the server serves")
    g.add_argument("--key-file", default="", help="file holding the API key (empty: none); never printed")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds of silence before a retry (default %(default)s)")
    g.add_argument("--retries", type=int, default=5, help="retries per request (default %(default)s)")
    g.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling (default %(default)s)")
    g.add_argument("--max-tokens", type=int, default=1024, help="longest answer (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed sent with every request (default %(default)s)")
    g.add_argument("--json-mode", action=argparse.BooleanOptionalAction, default=True,
                   help="ask for response_format json_object (turn off for servers that refuse it)")
    g.add_argument("--answer-attempts", type=int, default=2,
                   help="replies per report before it counts as failed; a malformed one is sent back with what was "
                        "wrong (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from pipeline.descriptions.extract import run_descriptions
    from pipeline.descriptions.llm import ChatClient, ChatSettings, read_key
    from pipeline.descriptions.questions import load_questions
    from pipeline.errors import PipelineError

    questions = load_questions(args.questions, args.labels)
    if args.from_csv:
        run_descriptions(questions=questions, out_questions=args.out_questions, out=args.out,
                         failures_out=args.failures, from_csv=args.from_csv)
        return 0
    if not (args.reports_index and args.cache_dir and args.base_url):
        raise PipelineError("descriptions: give --from-csv, or --reports-index, --cache-dir and --base-url (the LLM)")
    settings = ChatSettings(model=args.model, max_tokens=args.max_tokens, seed=args.seed, json_mode=args.json_mode,
                            timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    with ChatClient(args.base_url, settings, key=read_key(args.key_file)) as client:
        run_descriptions(questions=questions, out_questions=args.out_questions, out=args.out,
                         failures_out=args.failures, reports_index=args.reports_index, client=client,
                         cache_dir=args.cache_dir, attempts=args.answer_attempts)
    return 0
