# Shared wiring: output roots, the slide list, and input functions. Decisions live in the pipeline package.
import shlex
from pathlib import Path

from pipeline import workflow_support as ws

OUT = config["output_dir"]
REPO = workflow.basedir
COHORT = ws.cohort_slides(config, REPO)
SLIDES = sorted(COHORT)


wildcard_constraints:
    slide=ws.slide_regex(SLIDES),


def slide_path(wildcards):
    return COHORT[wildcards.slide]


def mpp_override_args(wildcards):
    return ws.mpp_override_args(config["mpp_overrides"], wildcards.slide)


def final_outputs():
    return rules.patch_all.input


def status_table_command():
    return (
        f"python -m pipeline status --status-dir {shlex.quote(OUT + '/status')} "
        f"--out {shlex.quote(OUT + '/status.csv')} || true"
    )
