"""Benchmark: the whole demo, its wall time and job seconds per rule, and a check that its numbers did not move.

Runs `snakemake --cores N` from scratch in a checkout (--folder), or reads a finished run's results folder
(--results), then:

- compares every results/models/{task}/comparison.md with tests/data/demo_comparison/{task}.md (the tables of the
  run that made them, see the README there) and exits 1 if one differs, is missing or is extra: a speed-up must
  not change a single number;
- prints the wall time and, per rule, its jobs and the sum of their benchmark seconds (Snakemake's
  results/benchmarks/**.tsv, column s) with each rule's share of the total, and the CPU seconds (column cpu_time),
  which a busy shared machine inflates less than wall seconds.

A job's rule is read from the Snakemake log (each job's `rule NAME:` and `benchmark: PATH` lines) when there is one
(the run's own, or --log), else from the benchmark's path. The wall time is the run's own, or the
`Elapsed (wall clock) time` of `/usr/bin/time -v` in --log.

    python bench/demo.py --folder /path/to/checkout --fresh   # delete its results/ and run the demo (~10-30 min)
    python bench/demo.py --results results --log demo.log --tsv job_seconds.tsv   # a finished run
"""

from __future__ import annotations

import argparse
import csv
import difflib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPECTED = REPO / "tests" / "data" / "demo_comparison"
#: benchmark paths (relative to results/benchmarks, without .tsv) of rules not named by their folder
PATH_RULES = [
    (r"pretrain/tiles", "pretrain_tiles"),
    (r"pretrain/eval_.*", "hlss_eval"),
    (r"pretrain/[^/]+", "pretrain"),
    (r"cohort/dataset", "dataset"),
    (r"extract/chunks/.*", "extract_chunk"),
]


@dataclass
class RuleTime:
    """The jobs of one rule: how many, and the sums of their benchmark wall and CPU seconds."""

    rule: str
    jobs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def rule_of_path(relative: str) -> str:
    """A benchmark file's rule from its path under results/benchmarks (the workflow's benchmark: patterns)."""
    stem = relative.removesuffix(".tsv")
    for pattern, rule in PATH_RULES:
        if re.fullmatch(pattern, stem):
            return rule
    return stem.split("/")[0]


def rules_from_log(text: str) -> dict[str, str]:
    """benchmark path (under results/benchmarks/) -> rule, from a Snakemake log: every job prints `rule NAME:`
    (or `localrule`), then its `benchmark: PATH`."""
    found, rule = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line.strip())
        if head:
            rule = head.group(1)
            continue
        bench = re.match(r"^benchmark: (\S+)$", line.strip())
        if bench and rule and "benchmarks/" in bench.group(1):
            found[Path(bench.group(1)).as_posix().split("benchmarks/", 1)[1]] = rule
    return found


def wall_from_log(text: str) -> float | None:
    """Seconds of `/usr/bin/time -v`'s 'Elapsed (wall clock) time (h:mm:ss or m:ss): ...' line, if present."""
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not match:
        return None
    seconds = 0.0
    for part in match.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def read_benchmark(path: Path) -> tuple[float, float]:
    """(s, cpu_time) of a Snakemake benchmark file (its last row: one repeat per job here)."""
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    last = rows[-1]
    return float(last["s"]), float(last.get("cpu_time") or 0.0)


def rule_times(results: Path, log_text: str = "") -> list[RuleTime]:
    """Per rule, its jobs and summed seconds, in the order of most seconds first."""
    root = results / "benchmarks"
    by_log = rules_from_log(log_text)
    times: dict[str, RuleTime] = {}
    for path in sorted(root.rglob("*.tsv")):
        relative = path.relative_to(root).as_posix()
        rule = by_log.get(relative) or rule_of_path(relative)
        seconds, cpu = read_benchmark(path)
        entry = times.setdefault(rule, RuleTime(rule))
        entry.jobs += 1
        entry.seconds += seconds
        entry.cpu_seconds += cpu
    return sorted(times.values(), key=lambda t: (-t.seconds, t.rule))


def table_rows(times: list[RuleTime], wall: float | None) -> list[list[str]]:
    """rule, jobs, s, share of s, cpu_s: per rule, then the total, then the wall time."""
    total = sum(t.seconds for t in times)
    rows = [[t.rule, str(t.jobs), f"{t.seconds:.2f}", f"{t.seconds / total:.3f}" if total else "nan",
             f"{t.cpu_seconds:.2f}"] for t in times]
    rows.append(["total", str(sum(t.jobs for t in times)), f"{total:.2f}", "1.000" if total else "nan",
                 f"{sum(t.cpu_seconds for t in times):.2f}"])
    rows.append(["wall", "", f"{wall:.2f}" if wall is not None else "nan", "", ""])
    return rows


HEADER = ["rule", "jobs", "s", "share", "cpu_s"]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def comparison_problems(results: Path, expected: Path = EXPECTED) -> list[str]:
    """Why the run's comparison.md tables differ from the expected ones (empty: every one is identical)."""
    found = {p.parent.name: p for p in (results / "models").glob("*/comparison.md")}
    wanted = {p.stem: p for p in expected.glob("*.md") if p.name != "README.md"}
    if not wanted:
        return [f"no expected tables in {expected}"]
    problems = [f"{task}: comparison.md missing" for task in sorted(set(wanted) - set(found))]
    problems += [f"{task}: a comparison.md with no expected table" for task in sorted(set(found) - set(wanted))]
    for task in sorted(set(found) & set(wanted)):
        got, want = found[task].read_text(), wanted[task].read_text()
        if got != want:
            diff = difflib.unified_diff(want.splitlines(), got.splitlines(), f"expected/{task}.md",
                                        f"{found[task]}", lineterm="")
            problems.append(f"{task}: comparison.md differs\n" + "\n".join(diff))
    return problems


def run_demo(folder: Path, cores: int, fresh: bool) -> tuple[float, str]:
    """Run the demo from scratch in `folder` (a checkout); its wall seconds and the Snakemake log."""
    results = folder / "results"
    if results.exists():
        if not fresh:
            raise SystemExit(f"{results} exists: pass --fresh to delete it and run from scratch")
        shutil.rmtree(results)
    env = {**os.environ, "PYTHONPATH": str(folder)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores)], cwd=folder, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    if results.exists():
        (results / "logs").mkdir(parents=True, exist_ok=True)
        (results / "logs" / "bench_demo.log").write_text(log)
    if proc.returncode != 0:
        print(log[-6000:], file=sys.stderr)
        raise SystemExit(f"the demo failed (snakemake exit {proc.returncode})")
    return wall, log


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--folder", type=Path, help="a checkout to run the demo in (its results/ must not exist)")
    where.add_argument("--results", type=Path, help="a finished run's results folder (nothing is run)")
    parser.add_argument("--fresh", action="store_true", help="--folder: delete its results/ first")
    parser.add_argument("--cores", type=int, default=2, help="--folder: snakemake --cores")
    parser.add_argument("--log", type=Path, help="--results: the run's Snakemake log (rules; /usr/bin/time -v wall)")
    parser.add_argument("--expected", type=Path, default=EXPECTED, help="folder of the expected {task}.md tables")
    parser.add_argument("--tsv", type=Path, help="also write the per-rule table here (tab-separated)")
    args = parser.parse_args(argv)
    if args.folder:
        wall, log = run_demo(args.folder.resolve(), args.cores, args.fresh)
        results = args.folder.resolve() / "results"
    else:
        results = args.results.resolve()
        log = args.log.read_text(errors="replace") if args.log else ""
        wall = wall_from_log(log)
    rows = table_rows(rule_times(results, log), wall)
    print(f"wall time: {wall:.1f} s" if wall is not None else "wall time: unknown (no --log with /usr/bin/time -v)")
    print_table(rows)
    if args.tsv:
        write_tsv(args.tsv, rows)
    problems = comparison_problems(results, args.expected)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("comparison tables: " + ("identical to " + str(args.expected) if not problems else "DIFFERENT"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
