# Shared wiring: output roots, the slide list, tasks and backbones, and input functions. Decisions live in the
# pipeline package (pipeline/wiring/: layout, flags, cohort, gdc), where they are tested; the path layout is
# pipeline/wiring/layout.py, and every path below is built from it.
import shlex
from pathlib import Path

from pipeline import status
from pipeline.features.chunks import chunks as feature_chunks
from pipeline.prompt_files import resolve_prompt_file
from pipeline.training import tasks as task_types
from pipeline.wiring import cohort as ws
from pipeline.wiring import flags
from pipeline.wiring import gdc as gdc_wiring
from pipeline.wiring import layout
from pipeline.wiring import pretrain as pw

OUT = config["output_dir"]
REPO = workflow.basedir
COHORT = ws.cohort_slides(config)
SLIDES = sorted(COHORT)
TASKS = ws.tasks(config)
#: each method's settings from train.method_settings, checked against its Settings dataclass
METHOD_SETTINGS = ws.method_settings(config)
BACKBONES = pw.fill_hlss_weights(ws.backbones(config), OUT)
#: `{vlm}_hlss` backbone -> its VLM; those pretrained here (no weights given) depend on the pretrain rule's checkpoint
HLSS = pw.hlss_backbones(BACKBONES)
PRETRAINED = pw.pretrained_here(BACKBONES)
#: of those, the ones whose features are the VLM's adapted (frozen tower), not extracted again (rule adapt_features)
ADAPTED = pw.adapted_here(BACKBONES, config["pretrain"], config["source"])
PRE = config["pretrain"]
READER = config["slides"]["reader"]

# The interpreter of every job's `$HIVE_PYTHON -m pipeline` (set in the shell prefix below): the one Snakemake runs in
# (so an unactivated venv's snakemake works), or the conda env's `python` under --sdm conda. Its one home is
# flags.python_command. A shell variable, not a params entry, so moving the venv does not rerun every job.
PY = flags.python_command(workflow.deployment_settings.deployment_method)

# Every job imports `pipeline` from this checkout: the conda envs (envs/*.yaml, --sdm conda) hold only the
# dependencies, and Snakemake strips PYTHONPATH from the environment of conda jobs, so the command sets it.
shell.prefix(f"export PYTHONPATH={shlex.quote(REPO)}:$PYTHONPATH; HIVE_PYTHON={PY}; set -euo pipefail; ")


wildcard_constraints:
    slide=ws.slide_regex(SLIDES),
    backbone=ws.name_regex(list(BACKBONES)),
    task=ws.name_regex(list(TASKS)),
    split=task_types.split_regex(),
    run=task_types.run_regex(),
    chunk=r"chunk\d+",


def out(pattern, **values):
    """A path of the layout under the output folder; unnamed wildcards stay wildcards."""
    return f"{OUT}/{pattern}" if not values else expand(f"{OUT}/{pattern}", **values, allow_missing=True)


#: extraction in chunk jobs (several slides and/or every backbone per job) instead of one job per backbone and slide
CHUNKED = config["features"]["slides_per_job"] > 1 or config["features"]["shared_decode"]


def extract_chunks():
    """Chunked extraction: chunk name -> its slides (pipeline.features.chunks.chunks), formed from the
    usable slides, so that a slide known to have failed an earlier stage does not hold up a chunk."""
    return feature_chunks(usable_ids(), config["features"]["slides_per_job"])


def extract_ids(wildcards=None):
    """The slides extract_all asks features of: all (failed ones retried) with one slide per job, else the
    chunked (usable) ones."""
    return usable_ids() if CHUNKED else cohort_ids()


def chunk_of_slide(slide):
    return next(name for name, ids in extract_chunks().items() if slide in ids)


def cohort_ids(wildcards=None):
    """Every slide of the cohort; for GDC, the query checkpoint's sheet (so this waits for the query)."""
    if config["source"] == "gdc":
        return gdc_wiring.cohort_slide_ids(checkpoints.gdc_query.get().output.cohort)
    return SLIDES


def usable_ids():
    """The cohort less the slides that failed a stage in an earlier run or were found to have no tissue
    (pipeline.status.left_out, one scan of the status records); dataset.csv lists each in dropped.csv with its reason.

    Per-slide rules still retry failed slides, so after a `--keep-going` run that lost a few, the next run trains on
    the rest."""
    status_dir = out(layout.STATUS_DIR)
    left = set(status.left_out(status_dir))
    left -= ws.retried_by_overrides(status_dir, config["mpp_overrides"])  # fixed by an override: retried now
    return [s for s in cohort_ids() if s not in left]


def slide_file(slide):
    if config["source"] == "gdc":
        return gdc_wiring.slide_file(config["gdc"], slide)
    return COHORT[slide]


def slide_path(wildcards):
    return slide_file(wildcards.slide)


def mpp_override_args(wildcards):
    return flags.mpp_override_flags(config["mpp_overrides"], wildcards.slide)


def backbone_param(key):
    """A params function: the wildcard backbone's `weights` or `tokenizer` from features.backbones."""
    return lambda wildcards: BACKBONES[wildcards.backbone][key]


def hlss_checkpoints(names):
    """The pretrain checkpoints that backbones `names` load (none for a VLM, or an HLSS backbone given weights)."""
    return [BACKBONES[name]["weights"] for name in names if name in PRETRAINED]


def hlss_checkpoint(wildcards):
    """An input function: the wildcard backbone's pretrain checkpoint, when it has one made here."""
    return hlss_checkpoints([wildcards.backbone])


def per_slide(pattern, **fixed):
    """An input function expanding `pattern` over the cohort's slides (after the GDC query when source is gdc)."""
    return lambda wildcards: expand(pattern, slide=cohort_ids(), **fixed)


def sheet_inputs(wildcards):
    """GDC: the query's sheet only; slides arrive by their own download jobs (a failed one is recorded and its
    slide left out of the dataset with the reason, so the sheet never waits for a download that cannot succeed)."""
    if config["source"] == "gdc":
        return [checkpoints.gdc_query.get().output.cohort]
    return ws.sheet_inputs(config)


def features_of(slides, backbone):
    """The 5x and hierarchical feature files of `slides` for `backbone`."""
    return {
        "features_5x": expand(out(layout.FEATURES_5X), slide=slides, backbone=backbone),
        "hierarchical": expand(out(layout.HIERARCHICAL), slide=slides, backbone=backbone),
    }


def dataset_inputs(wildcards):
    ids = usable_ids()
    # every backbone's features: a slide enters dataset.csv only when all of them exist (an adapted HLSS backbone's
    # follow from its VLM's, so the cohort table and the VLM's training need not wait for pretraining)
    found = [features_of(ids, bb) for bb in BACKBONES if bb not in ADAPTED]
    return {
        "sheet": out(layout.SHEET),
        "patches": expand(out(layout.PATCHES), slide=ids),
        "features_5x": [f for group in found for f in group["features_5x"]],
        "hierarchical": [f for group in found for f in group["hierarchical"]],
    }


def prompt_file(wildcards):
    return str(resolve_prompt_file(wildcards.task, TASKS[wildcards.task]["prompts"]))


def hierarchy_reports(wildcards):
    return expand(out(layout.HIERARCHY_REPORT), slide=usable_ids(), backbone=wildcards.backbone)


def split_files(wildcards):
    split = ws.split_of_run(TASKS[wildcards.task], wildcards.run)
    return expand(out(layout.SPLIT), task=wildcards.task, split=split, k=range(config["cohort"]["folds"]))


def train_inputs(wildcards):
    """Everything a method's training job reads, following its task, backbone and run (shot count or cv) wildcards;
    a method that reads report descriptions (FiVE) also gets the task's question set and descriptions."""
    inputs = {
        "dataset": out(layout.DATASET),
        "prompts": out(layout.PROMPTS, task=wildcards.task),
        "splits": split_files(wildcards),
        "text": out(layout.TEXT_EMBEDDINGS, task=wildcards.task, backbone=wildcards.backbone),
        "hlss": hlss_checkpoint(wildcards),
        **features_of(usable_ids(), wildcards.backbone),
    }
    if ws.reads_descriptions(wildcards.method):
        inputs["questions"] = out(layout.QUESTIONS, task=wildcards.task)
        inputs["descriptions"] = out(layout.DESCRIPTIONS, task=wildcards.task)
    return inputs


def method_summaries(wildcards):
    w = dict(task=wildcards.task, backbone=wildcards.backbone, run=wildcards.run)
    return expand(out(layout.METHOD_SUMMARY), **w, method=ws.task_methods(TASKS[wildcards.task], wildcards.backbone))


def task_results(wildcards):
    task = TASKS[wildcards.task]
    return expand(out(layout.RESULTS), task=wildcards.task, backbone=task["backbones"], run=task["runs"])


def predict_slide_ids():
    slides = config["predict"]["slides"] or usable_ids()
    unknown = sorted(set(slides) - set(cohort_ids()))
    if unknown:
        raise ValueError(f"predict.slides lists slides that are not in the cohort: {unknown}")
    return slides


def predict_inputs(wildcards):
    slides = predict_slide_ids()
    w = dict(task=wildcards.task, backbone=wildcards.backbone, run=wildcards.run, method=wildcards.method)
    return {
        "checkpoints": expand(out(layout.CHECKPOINT), **w, k=range(config["cohort"]["folds"])),
        "slides": [slide_file(s) for s in slides],
        "patches": expand(out(layout.PATCHES), slide=slides),
        "hlss": hlss_checkpoint(wildcards),
        **features_of(slides, wildcards.backbone),
    }


def every_run(pattern):
    """`pattern` for every task x backbone x run (shot count or cv) x method of the config."""
    paths = []
    for name, task in TASKS.items():
        for backbone in task["backbones"]:
            methods = ws.task_methods(task, backbone)
            paths += expand(out(pattern), task=name, backbone=backbone, run=task["runs"], method=methods)
    return sorted(set(paths))


# --- HLSS pretraining (workflow/rules/pretrain.smk) ---


def pretrain_ids():
    """The slides HLSS learns from (pretrain.slides, default every usable slide, less pretrain.exclude_slides)."""
    return pw.pretrain_slides(PRE, usable_ids(), cohort_ids())


def attribute_file():
    from pipeline.pretrain.attributes import resolve_attribute_file

    cohort = config["gdc"]["task"] if config["source"] == "gdc" else next(iter(TASKS), None)
    return str(resolve_attribute_file(PRE["attributes"] or None, cohort))


def eval_inputs(wildcards):
    """Both backbones' features of the usable slides, their text embeddings of the task, the dataset and prompts."""
    after, before = wildcards.backbone, HLSS[wildcards.backbone]
    ids = usable_ids()
    inputs = {"dataset": out(layout.DATASET), "prompts": out(layout.PROMPTS, task=wildcards.task)}
    for side, name in (("before", before), ("after", after)):
        inputs[f"{side}_20x"] = expand(out(layout.FEATURES_20X), slide=ids, backbone=name)
        inputs[f"{side}_5x"] = expand(out(layout.FEATURES_5X), slide=ids, backbone=name)
        inputs[f"{side}_hierarchical"] = expand(out(layout.HIERARCHICAL), slide=ids, backbone=name)
        inputs[f"{side}_text"] = out(layout.TEXT_EMBEDDINGS, task=wildcards.task, backbone=name)
    return inputs


def adapt_files(backbone):
    """The 5x and 20x feature files of the usable slides for `backbone` (a name, or the wildcard left open)."""
    ids = usable_ids()
    return [
        f
        for pattern in (layout.FEATURES_5X, layout.FEATURES_20X)
        for f in expand(out(pattern), slide=ids, backbone=backbone)
    ]


def final_outputs():
    return [
        rules.patch_all.input,
        rules.extract_all.input,
        rules.hierarchy_all.input,
        rules.splits_all.input,
        rules.descriptions_all.input,
        rules.train_all.input,
        rules.predict_all.input,
        rules.pretrain_all.input,
    ]


def status_table_command():
    status_dir = shlex.quote(f"{OUT}/{layout.STATUS_DIR}")
    status_csv = shlex.quote(f"{OUT}/{layout.STATUS_TABLE}")
    return f"$HIVE_PYTHON -m pipeline status --status-dir {status_dir} --out {status_csv} || true"
