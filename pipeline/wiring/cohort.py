"""What the Snakemake rules need to know about the cohort and its tasks, computed here so it is tested code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from pipeline.demo_cohort import demo_slides
from pipeline.labels import LabelTree
from pipeline.wiring import layout
from pipeline.wiring.flags import quote_flags

#: the real slide bundled for the demo (see pipeline/data/slides/SOURCES.md).
BUNDLED_SLIDE = Path(__file__).resolve().parents[1] / "data" / "slides" / "CMU-1-Small-Region.svs"


def cohort_slides(config: dict[str, Any]) -> dict[str, str]:
    """slide_id -> slide path for the configured source, known before any job runs.

    demo: generated slides (layout.DEMO_SLIDE) plus the bundled real slide. local: the user's sheet,
    validated now so a bad sheet stops the run before any work. gdc: the slides listed by the query checkpoint
    (empty here; the GDC rules add them once the manifest exists).
    """
    out = config["output_dir"]
    source = config["source"]
    if source == "demo":
        d = config["demo"]
        slides = {
            s.slide_id: f"{out}/{layout.DEMO_SLIDE.format(slide=s.slide_id)}"
            for s in demo_slides(d["classes"], d["slides_per_class"])
        }
        if d.get("include_real", True):
            slides[BUNDLED_SLIDE.stem] = str(BUNDLED_SLIDE)
        return slides
    if source == "local":
        from pipeline.sheet import read_local_sheet

        local = config["local"]
        # labels of no task are refused now, with the sheet's other problems (a typo would otherwise be processed
        # through every per-slide stage and then dropped)
        rows = read_local_sheet(local["sheet"], local["slides_dir"], dataset_labels(config))
        return {r.slide_id: str(r.file) for r in rows}
    return {}


def retried_by_overrides(status_dir: str | Path, overrides_csv: str | Path | None) -> set[str]:
    """Failed slides named in the mpp-override CSV, which was changed after their last failure.

    This run retries their per-slide stages with the override (it changes those jobs' parameters), so the cohort
    stages wait for them rather than leaving them out until the run after. A slide that fails again has a failure
    newer than the CSV and is left out as usual.
    """
    import time

    from pipeline.mpp_overrides import read_mpp_overrides
    from pipeline.status import collect

    if not overrides_csv or not Path(overrides_csv).is_file() or not Path(status_dir).is_dir():
        return set()
    named = set(read_mpp_overrides(overrides_csv))
    changed = Path(overrides_csv).stat().st_mtime
    last_failure: dict[str, float] = {}
    for row in collect(status_dir):
        if row["status"] != "ok" and row["slide"] in named:
            when = time.mktime(time.strptime(row["time"], "%Y-%m-%dT%H:%M:%S"))
            last_failure[row["slide"]] = max(when, last_failure.get(row["slide"], when))
    return {slide for slide, when in last_failure.items() if when < changed}


def slide_regex(slide_ids: list[str]) -> str:
    """A wildcard constraint matching exactly the cohort's slide ids (keeps other paths from matching rules)."""
    if not slide_ids:
        return r"[^/]+"
    return "|".join(re.escape(s) for s in sorted(slide_ids, key=len, reverse=True))


def sheet_inputs(config: dict[str, Any]) -> list[str]:
    if config["source"] == "local":
        return [config["local"]["sheet"]]
    return []  # demo: generated from config; gdc: the query checkpoint (see common.smk)


def sheet_command(config: dict[str, Any], out: str, python: str = "python") -> str:
    """The command writing the cohort sheet (layout.SHEET; pipeline.sheet.SHEET_COLUMNS) for the source, run by
    `python` (flags.python_command)."""
    if config["source"] == "local":
        local = config["local"]
        return (
            f"{python} -m pipeline local-sheet --sheet {shlex.quote(local['sheet'])} "
            f"--slides-dir {shlex.quote(local['slides_dir'])}"
        )
    if config["source"] == "gdc":
        return (
            f"{python} -m pipeline local-sheet --sheet {shlex.quote(out + '/' + layout.GDC_COHORT)} "
            f"--slides-dir {shlex.quote(config['gdc']['slides_dir'])} --allow-missing-files"
        )
    d = config["demo"]
    extra = f" --extra {BUNDLED_SLIDE.stem}={shlex.quote(str(BUNDLED_SLIDE))}" if d.get("include_real", True) else ""
    return (
        f"{python} -m pipeline demo sheet --slides-dir {shlex.quote(out + '/' + layout.DEMO_SLIDES_DIR)} "
        f"--classes {' '.join(d['classes'])} --slides-per-class {d['slides_per_class']} --seed {d['seed']}{extra}"
    )


SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _item_defaults(*keys: str) -> dict[str, Any]:
    """Defaults of a list item's keys from the config schema (their one home; Snakemake fills none inside lists)."""
    import yaml

    node = yaml.safe_load(SCHEMA.read_text())
    for key in keys:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["items"]["properties"].items() if "default" in v}


def _by_name(items: list[dict[str, Any]], what: str, defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if item["name"] in out:
            raise ValueError(f"config: {what} '{item['name']}' is listed twice")
        out[item["name"]] = {**defaults, **item}
    return out


def task_type(task: dict[str, Any]) -> Any:
    """The registered task type (class) of a config task; an unknown type is refused naming the registered ones."""
    from pipeline.training.tasks import get_task_type

    return get_task_type(task.get("type", "classification"))


def cross_validated(task: dict[str, Any]) -> bool:
    """Whether a task's type is evaluated by k-fold cross-validation over patients instead of few-shot draws."""
    return bool(task_type(task).runs.cross_validated)


def _with_tree(task: dict[str, Any]) -> dict[str, Any]:
    """Fill in what a task's label tree implies (see pipeline.labels).

    `labels` becomes the classes the task predicts: the fine labels of a `hierarchical` task, the coarse classes of
    a `classification` task with a tree. `sheet_labels` are the labels its slides carry in the cohort sheet, and
    `tree_args` the tree in the commands' `--label-tree` form (empty without a tree).
    """
    where = f"config: task '{task['name']}'"
    tree_map = task.get("tree") or {}
    if cross_validated(task) and not tree_map:  # labels optional: they restrict the cohort if given
        return {**task, "labels": list(task.get("labels") or []), "sheet_labels": list(task.get("labels") or []),
                "tree_args": []}
    if task["type"] == "hierarchical" and not tree_map:
        raise ValueError(f"{where} is hierarchical and needs a `tree: {{coarse: [fine, ...]}}`")
    if not tree_map:
        if len(task.get("labels") or []) < 2:
            raise ValueError(f"{where} needs `labels`, at least two classes (or a `tree`)")
        return {**task, "sheet_labels": list(task["labels"]), "tree_args": []}
    tree = LabelTree.from_mapping(tree_map, where)
    classes = list(tree.fine if task["type"] == "hierarchical" else tree.coarse)
    if task.get("labels") and list(task["labels"]) != classes:
        raise ValueError(
            f"{where}: `labels` {task['labels']} disagree with its tree, whose {task['type']} classes are {classes}; "
            "leave `labels` out (the tree gives them)"
        )
    return {**task, "labels": classes, "sheet_labels": list(tree.fine), "tree_args": tree.to_args()}


def tasks(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The training tasks of the cohort (config.yaml `tasks:`) by name, schema defaults and label trees filled in."""
    found = _by_name(config["tasks"], "task", _item_defaults("tasks"))
    out = {name: _with_tree({**task, "methods": list(task.get("methods") or task_type(task).default_methods)})
           for name, task in found.items()}
    folds = config["cohort"]["folds"]
    listed = [b["name"] for b in config.get("features", {}).get("backbones", [])]
    method_settings(config)  # every method's settings checked now, before any job
    for task in out.values():
        _check_methods(task)
        task["settings"] = settings_of_task(task)
        unknown = [b for b in task.get("backbones") or [] if b not in listed]
        if unknown:
            raise ValueError(f"config: task '{task['name']}' trains on backbone(s) {unknown} that features.backbones "
                             f"does not list ({listed})")
        task["backbones"] = list(task.get("backbones") or listed)
        _check_backbone_methods(task, listed)
        task["runs"] = run_names(task, folds)
        task["splits"] = [split_of_run(task, run) for run in task["runs"]]
    return out


def _check_backbone_methods(task: dict[str, Any], listed: list[str]) -> None:
    """Entries must name backbones the task trains on and methods it has; an entry for a backbone that
    features.backbones does not list is dropped (a config keeps it while the backbone is switched off)."""
    where = f"config: task '{task['name']}' backbone_methods"
    task["backbone_methods"] = {b: m for b, m in (task.get("backbone_methods") or {}).items() if b in listed}
    for backbone, methods in task["backbone_methods"].items():
        if backbone not in task["backbones"]:
            raise ValueError(f"{where} names backbone '{backbone}', which the task does not train on "
                             f"({task['backbones']})")
        extra = [m for m in methods if m not in task["methods"]]
        if extra:
            raise ValueError(f"{where}: {backbone} lists {extra}, which are not among the task's methods "
                             f"{task['methods']}")


def task_methods(task: dict[str, Any], backbone: str) -> list[str]:
    """The methods a task trains on one backbone: its `backbone_methods` entry, else all its methods."""
    return list((task.get("backbone_methods") or {}).get(backbone) or task["methods"])


def run_names(task: dict[str, Any], folds: int) -> list[str]:
    """A task's run folders under models/{task}/{backbone}/ (its type's RunScheme: `{n}shot` per shot count, or
    `cv{folds}` for a cross-validated task)."""
    return task_type(task).runs.run_names(task, folds)


def split_of_run(task: dict[str, Any], run: str) -> str:
    """The split folder suffix of a run: `4shot` -> `4` (HiVE-MIL's {task}_{shots}), `cv5` -> `cv5`."""
    return task_type(task).runs.split_of_run(run)


def shots_of_run(task: dict[str, Any], run: str) -> str:
    """The train command's `--shots` value of a run (empty for cross-validation)."""
    shots = task_type(task).runs.shots_of_run(run)
    return "" if shots is None else str(shots)


def split_command(task: dict[str, Any], cohort: dict[str, Any], split: str) -> str:
    """The command and flags (beyond --dataset and the outputs) that draw split folder `split` of a task, from its
    type (`split_command`, `split_arguments`) and config.yaml's `cohort:` section."""
    kind = task_type(task)
    count = int(split.removeprefix("cv"))
    return kind.split_command + " " + quote_flags(kind.split_arguments(task, cohort, count))


# --- settings of methods and task types (each in its own module's dataclass) ----------------------------------


def method_settings(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`train.method_settings`, each method's entry checked against its Settings dataclass now (an unknown method
    or key stops the run before any job, naming the method and its allowed settings)."""
    from pipeline.training.methods import method_settings as check

    section = config.get("train", {}).get("method_settings") or {}
    for name, values in section.items():
        check(name, values)
    return {name: dict(values or {}) for name, values in section.items()}


def settings_of_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task's `settings:`, checked against its type's Settings dataclass now."""
    from pipeline.training.tasks.base import task_settings

    values = dict(task.get("settings") or {})
    task_settings(task_type(task), values, task["name"])
    return values


def _check_methods(task: dict[str, Any]) -> None:
    """Refuse, before any job runs, a method listed for a task type it does not support."""
    from pipeline.training.methods import get_method

    wrong = [m for m in task["methods"] if not task_type(task).accepts(get_method(m))]
    if wrong:
        raise ValueError(
            f"config: task '{task['name']}' is {task['type']}, which method(s) {wrong} do not support "
            f"(`python -m pipeline methods` lists each method's task types)"
        )


def has_survival(config: dict[str, Any]) -> bool:
    """Whether some task is a survival task (dataset.csv then lists the slides without usable follow-up)."""
    return any(cross_validated({"type": t.get("type", "classification")}) for t in config["tasks"])


def survival_labels(task: dict[str, Any]) -> list[str]:
    """The train command's `--labels` (a survival task's label restriction; classification takes its classes
    from the prompt file)."""
    return list(task["labels"]) if cross_validated(task) else []


def dataset_labels(config: dict[str, Any]) -> list[str]:
    """Labels that dataset.csv keeps: every sheet label of some task, in first-seen order (other slides are dropped).

    Empty (every label) when a survival task names no labels: it uses every labelled slide of the cohort."""
    seen: dict[str, None] = {}
    for task in tasks(config).values():
        if cross_validated(task) and not task["sheet_labels"]:
            return []
        seen.update(dict.fromkeys(task["sheet_labels"]))
    return list(seen)


def backbones(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Backbone name -> its weights and tokenizer (config.yaml `features.backbones`), schema defaults filled in."""
    return _by_name(config["features"]["backbones"], "backbone", _item_defaults("features", "backbones"))


def name_regex(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names (a task or backbone not in the config matches no rule)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or r"[^/]+"


# --- reports and descriptions (FiVE) ----------------------------------------------------------------------------


def reads_descriptions(method: str) -> bool:
    """Whether a registered method trains on the patients' report descriptions (FiVE)."""
    from pipeline.training.methods import get_method

    return "descriptions" in get_method(method).inputs


def description_tasks(config: dict[str, Any]) -> list[str]:
    """The tasks with a method that reads report descriptions: each gets a descriptions job."""
    return [name for name, task in tasks(config).items() if any(reads_descriptions(m) for m in task["methods"])]


def reports_source(config: dict[str, Any]) -> str:
    """The reports stage's source: `reports.source`, or for `auto` the one the slides imply (the demo's own reports,
    the GDC's report PDFs for GDC slides, the table when `reports.csv` names one). Refuses, before any job runs, a
    choice that cannot work while some task needs descriptions."""
    reports = config["reports"]
    source = reports["source"]
    if source == "auto":
        source = "csv" if reports["csv"] else config["source"] if config["source"] in ("demo", "gdc") else ""
    if not description_tasks(config):
        return source or "csv"
    if not source:
        raise ValueError(
            "config: the FiVE task(s) " + ", ".join(description_tasks(config)) + " need each patient's report; set "
            "reports.csv to a table case_id,text, or reports.source: gdc for TCGA cases"
        )
    if source == "demo" and config["source"] != "demo":
        raise ValueError(
            "config: reports.source is demo (the synthetic cohort's reports) but the slides come from "
            f"'{config['source']}'; set reports.source to gdc or csv (a case_id,text table)"
        )
    if source == "csv" and not reports["csv"]:
        raise ValueError("config: reports.source is csv but reports.csv names no table (columns case_id,text)")
    return source


def reports_table(config: dict[str, Any], out: str) -> list[str]:
    """The reports stage's table input: the demo's generated reports, the user's CSV, or none (GDC)."""
    source = reports_source(config)
    if source == "demo":
        return [f"{out}/{layout.DEMO_REPORTS}"]
    if source == "csv":
        return [config["reports"]["csv"]]
    return []


def description_table(config: dict[str, Any], task: dict[str, Any], out: str) -> str:
    """The ready-made descriptions a task's descriptions job checks instead of asking the LLM: the task's own
    `descriptions:` table, else the demo's precomputed ones (demo reports and the demo question set); '' = the LLM."""
    if task.get("descriptions"):
        return str(task["descriptions"])
    if reports_source(config) == "demo" and not task.get("questions"):
        return f"{out}/{layout.DEMO_DESCRIPTIONS}"
    return ""


def description_inputs(config: dict[str, Any], task: dict[str, Any], out: str) -> dict[str, str]:
    """The descriptions job's named inputs: the question set, and the ready-made table or the reports index."""
    from pipeline.descriptions.questions import resolve_question_file

    inputs = {"questions": str(resolve_question_file(task["name"], task.get("questions", "")))}
    table = description_table(config, task, out)
    if table:
        inputs["table"] = table
    else:
        inputs["reports"] = f"{out}/{layout.REPORTS_INDEX}"
    return inputs
