"""Check a text-prompt file in HiVE-MIL's format and write the checked copy the later stages read.

Survival tasks use attribute prompts instead (pipeline.attribute_prompts; recognised by their `region` and
`patch` lists). Format: JSON {class: {term: explanation}}; per class 4 coarse (5x) entries, then 12 fine (20x) entries, three per
coarse entry in parent order. The classes must be exactly the labels, in label order. Every problem found is
listed. Without --prompts, the file shipped for --task (pipeline/data/prompts/{task}.json) is checked.
"""

from __future__ import annotations

import argparse

from pipeline.prompt_files import check_prompts, resolve_prompt_file, shipped_prompt_files

NAME = "check-prompts"
HELP = "validate a HiVE-MIL text-prompt JSON against the label order"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", default="", help="prompt JSON file (default: the shipped one for --task)")
    parser.add_argument("--task", default="", help=f"task of a shipped prompt file: {sorted(shipped_prompt_files())}")
    parser.add_argument("--labels", nargs="*", default=None, help="label order the classes must follow")
    parser.add_argument("--out", default=None, help="where to write the checked copy (optional)")


def run(args: argparse.Namespace) -> int:
    from pipeline.attribute_prompts import check_attribute_prompts, is_attribute_file, read_json

    path = resolve_prompt_file(args.task, args.prompts)
    if is_attribute_file(read_json(path)):  # a survival task's attribute prompts (pipeline.attribute_prompts)
        attributes = check_attribute_prompts(path, args.out)
        print(f"{path}: OK, {attributes.k} survival attributes per level")
        return 0
    prompts = check_prompts(path, args.labels or None, args.out)
    print(f"{path}: OK, classes {prompts.labels}")
    return 0
