"""What the GDC rules need from `config["gdc"]`, as tested code rather than logic inside .smk files."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.formats import PathLike
from pipeline.wiring import layout


def client_args(gdc: dict[str, Any]) -> str:
    """Connection flags shared by gdc-query and gdc-download (the token by path only)."""
    args = [f"--api-url {shlex.quote(gdc['api_url'])}", f"--retries {int(gdc['retries'])}"]
    if gdc.get("token_file"):
        args.append(f"--token-file {shlex.quote(str(gdc['token_file']))}")
    return " ".join(args)


def query_args(gdc: dict[str, Any]) -> str:
    """Task flags of gdc-query: the preset, its narrowing, the per-class cap and a user manifest."""
    args = [f"--task {shlex.quote(gdc['task'])}", f"--max-slides-per-class {int(gdc['max_slides_per_class'])}"]
    if gdc.get("projects"):
        args.append("--projects " + " ".join(shlex.quote(p) for p in gdc["projects"]))
    if gdc.get("manifest"):
        args.append(f"--manifest {shlex.quote(str(gdc['manifest']))}")
    return " ".join(args)


def query_inputs(gdc: dict[str, Any]) -> list[str]:
    """A user manifest is an input, so editing it reruns the query; the token file is not (it changes nothing)."""
    return [str(gdc["manifest"])] if gdc.get("manifest") else []


def cohort_slide_ids(cohort_csv: PathLike) -> list[str]:
    """Slide ids of the query's cohort sheet, in sheet order."""
    path = Path(cohort_csv)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if "slide_id" not in (reader.fieldnames or []):
            raise PipelineError(f"cohort sheet {path} has no slide_id column")
        return [row["slide_id"] for row in reader]


def slide_pattern(gdc: dict[str, Any]) -> str:
    """Where a downloaded slide lies, with the `{slide}` wildcard: layout.GDC_SLIDE under `gdc.slides_dir` (the
    download rule's output, and every rule reading a GDC slide)."""
    return f"{gdc['slides_dir']}/{layout.GDC_SLIDE}"


def slide_file(gdc: dict[str, Any], slide: str) -> str:
    """The downloaded file of `slide` (slide_pattern filled in)."""
    return f"{gdc['slides_dir']}/{layout.GDC_SLIDE.format(slide=slide)}"
