"""The cohort status table: one row per slide and stage (ok or failed, with the reason).

Collects the records the stage commands leave under status/{stage}/{slide}.json. The workflow runs this at the
end of every run, successful or not, so a --keep-going run lists the slides that failed and why.
"""

from __future__ import annotations

import argparse

from pipeline import status

NAME = "status"
HELP = "write the per-slide status table (slide, stage, ok/failed, reason)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status-dir", required=True)
    parser.add_argument("--out", required=True, help="CSV to write")


def run(args: argparse.Namespace) -> int:
    rows = status.write_table(args.status_dir, args.out)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['stage']:<10} {r['slide']}: {r['reason']}")
    print(f"{len(rows)} records, {len(failed)} failed -> {args.out}")
    return 0
