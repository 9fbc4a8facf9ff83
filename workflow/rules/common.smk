# Shared wiring: output roots, the slide list, and input functions. Decisions live in the pipeline package
# (pipeline/workflow_support.py, pipeline/gdc/wiring.py), where they are tested.
import shlex
from pathlib import Path

from pipeline import workflow_support as ws
from pipeline.gdc import wiring as gdc_wiring
from pipeline.prompt_files import resolve_prompt_file

OUT = config["output_dir"]
REPO = workflow.basedir
COHORT = ws.cohort_slides(config)
SLIDES = sorted(COHORT)
BACKBONE = config["features"]["backbone"]
TASK = config["cohort"]["task"]

# Every job imports `pipeline` from this checkout: the conda envs (envs/*.yaml, --sdm conda) hold only the
# dependencies, and Snakemake strips PYTHONPATH from the environment of conda jobs, so the command sets it.
shell.prefix(f"export PYTHONPATH={shlex.quote(REPO)}:$PYTHONPATH; set -euo pipefail; ")


wildcard_constraints:
    slide=ws.slide_regex(SLIDES),
    backbone=r"[A-Za-z0-9_.-]+",


def cohort_ids(wildcards=None):
    """Every slide of the cohort; for GDC, the query checkpoint's sheet (so this waits for the query)."""
    if config["source"] == "gdc":
        return gdc_wiring.cohort_slide_ids(checkpoints.gdc_query.get().output.cohort)
    return SLIDES


def usable_ids():
    """The cohort less the slides that failed a stage in an earlier run (see ws.failed_slides)."""
    failed = ws.failed_slides(f"{OUT}/status")
    return [s for s in cohort_ids() if s not in failed]


def slide_file(slide):
    if config["source"] == "gdc":
        return f"{config['gdc']['slides_dir']}/{slide}.svs"
    return COHORT[slide]


def slide_path(wildcards):
    return slide_file(wildcards.slide)


def mpp_override_args(wildcards):
    return ws.mpp_override_args(config["mpp_overrides"], wildcards.slide)


def per_slide(pattern, **fixed):
    """An input function expanding `pattern` over the cohort's slides (after the GDC query when source is gdc)."""
    return lambda wildcards: expand(pattern, slide=cohort_ids(), **fixed)


def sheet_inputs(wildcards):
    if config["source"] == "gdc":
        return [checkpoints.gdc_query.get().output.cohort] + expand(
            f"{config['gdc']['slides_dir']}/{{slide}}.svs", slide=cohort_ids()
        )
    return ws.sheet_inputs(config)


def dataset_inputs(wildcards):
    ids = usable_ids()
    return {
        "sheet": f"{OUT}/cohort/sheet.csv",
        "patches": expand(f"{OUT}/patches/{{slide}}.h5", slide=ids),
        "features_5x": expand(f"{OUT}/features/{BACKBONE}/{BACKBONE}_5x/{{slide}}.h5", slide=ids),
        "hierarchical": expand(f"{OUT}/features/{BACKBONE}/hierarchical_{BACKBONE}_5x_20x/{{slide}}.h5", slide=ids),
    }


def prompt_file(wildcards):
    return str(resolve_prompt_file(TASK, config["cohort"]["prompts"]))


def hierarchy_reports(wildcards):
    return expand(f"{OUT}/hierarchy/{wildcards.backbone}/{{slide}}.json", slide=usable_ids())


def features_of(slides):
    """The 5x and hierarchical feature files of `slides` for the configured backbone."""
    return {
        "features_5x": expand(f"{OUT}/features/{BACKBONE}/{BACKBONE}_5x/{{slide}}.h5", slide=slides),
        "hierarchical": expand(f"{OUT}/features/{BACKBONE}/hierarchical_{BACKBONE}_5x_20x/{{slide}}.h5", slide=slides),
    }


def train_inputs(wildcards):
    found = features_of(usable_ids())
    return {
        "dataset": rules.dataset.output.dataset,
        "prompts": rules.check_prompts.output[0],
        "splits": expand(
            f"{OUT}/splits/{wildcards.task}_{wildcards.shots}/splits_{{k}}.csv",
            k=range(config["cohort"]["folds"]),
        ),
        "features": found["features_5x"] + found["hierarchical"],
    }


def predict_inputs(wildcards):
    slides = config["predict"]["slides"] or usable_ids()
    unknown = sorted(set(slides) - set(cohort_ids()))
    if unknown:
        raise ValueError(f"predict.slides lists slides that are not in the cohort: {unknown}")
    run = f"{OUT}/models/{wildcards.task}/{wildcards.backbone}/{wildcards.shots}shot"
    return {
        "checkpoints": expand(f"{run}/checkpoints/hivemil_fold{{k}}.pt", k=range(config["cohort"]["folds"])),
        "slides": [slide_file(s) for s in slides],
        **features_of(slides),
    }


def final_outputs():
    return [
        rules.patch_all.input,
        rules.extract_all.input,
        rules.hierarchy_all.input,
        rules.splits_all.input,
        rules.train_all.input,
        rules.predict_all.input,
    ]


def status_table_command():
    status_dir = shlex.quote(f"{OUT}/status")
    status_csv = shlex.quote(f"{OUT}/status.csv")
    return f"python -m pipeline status --status-dir {status_dir} --out {status_csv} || true"
