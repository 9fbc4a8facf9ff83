"""The training stage in the workflow: inputs follow the wildcards, several backbones and tasks in one run, the
schema and CLI agree with the registries and the training defaults, and the DAG-time code stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake
from wf_configs import load_config

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
TINY = {"name": "tiny", "weights": "random"}
QUILT = {"name": "quiltnet", "weights": "random"}
SMALL = load_config("two_slides", "training")


def dry_run_jobs(tmp_path: Path, config: dict, *targets: str) -> str:
    proc = run_snakemake(tmp_path, config, "-n", "-p", *targets)
    return proc.stdout + proc.stderr


def test_a_second_backbone_schedules_its_own_extraction_and_training_reads_its_features(tmp_path):
    config = {**SMALL, "features": {"backbones": [TINY, {"name": "plip", "weights": "random"}]}}
    out = dry_run_jobs(tmp_path, config, "results/models/demo/plip/1shot/results.csv")
    assert "results/features/plip/plip_5x/demo_glandular_00.h5" in out
    train_lines = [line for line in out.splitlines() if " -m pipeline train " in line]
    assert train_lines, out[-3000:]
    for line in train_lines:
        assert "--backbone plip" in line and "features/plip/plip_5x/" in line
        assert "features/tiny/" not in line


def test_a_backbone_or_task_not_in_the_config_matches_no_rule(tmp_path):
    proc = run_snakemake(tmp_path, {**SMALL, "features": {"backbones": [TINY]}}, "-n",
                         "results/models/demo/plip/1shot/results.csv", check=False)
    assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr


def test_methods_task_types_and_training_defaults_have_one_home():
    """The registries alone list methods and task types (the schema names none, so a new one is one module), and
    the training defaults live in the dataclasses: the schema restates none; config.yaml's shared `train:` keys
    equal TrainConfig's and its method settings are empty (the methods' defaults apply)."""
    from pipeline.features import list_backbones
    from pipeline.training.config import defaults
    from pipeline.wiring.flags import JOB_KEYS

    task = SCHEMA["properties"]["tasks"]["items"]["properties"]
    assert "enum" not in task["methods"]["items"] and "enum" not in task["type"]
    backbone = SCHEMA["properties"]["features"]["properties"]["backbones"]["items"]["properties"]["name"]
    assert sorted(backbone["enum"]) == sorted(list_backbones())
    train = SCHEMA["properties"]["train"]["properties"]
    assert set(train) == set(defaults()) | set(JOB_KEYS)
    assert not [k for k, v in train.items() if "default" in v and k not in JOB_KEYS]
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert {k: v for k, v in config["train"].items() if k not in JOB_KEYS} == defaults()
    assert all(not values for values in config["train"]["method_settings"].values())
    assert all(not t.get("settings") for t in config["tasks"])


def test_pretrain_schema_defaults_are_the_pretraining_config_and_the_demo_sets_every_key():
    from dataclasses import asdict

    from pipeline.pretrain.config import PretrainConfig
    from pipeline.wiring.pretrain import WORKFLOW_KEYS

    pretrain = SCHEMA["properties"]["pretrain"]["properties"]
    assert {k: v["default"] for k, v in pretrain.items() if k not in WORKFLOW_KEYS} == asdict(PretrainConfig())
    assert set(WORKFLOW_KEYS) <= set(pretrain)
    assert set(yaml.safe_load((REPO / "config.yaml").read_text())["pretrain"]) == set(pretrain)


def test_hlss_wiring_needs_the_vlm_listed_and_fills_in_the_checkpoint():
    from pipeline.wiring import pretrain as pw

    listed = {"tiny": {"weights": "random"}, "tiny_hlss": {"weights": ""}, "plip_hlss": {"weights": "/ckpt/h.pt"}}
    with pytest.raises(ValueError, match=r"not the VLM\(s\) \['plip'\]"):
        pw.hlss_backbones(listed)
    filled = pw.fill_hlss_weights(listed, "out")
    assert filled["tiny_hlss"]["weights"] == "out/pretrain/tiny_hlss/hlss.pt" and filled["tiny_hlss"]["pretrained"]
    assert filled["plip_hlss"]["weights"] == "/ckpt/h.pt" and not filled["plip_hlss"]["pretrained"]
    assert pw.pretrained_here(filled) == ["tiny_hlss"]
    section = {"slides": [], "exclude_slides": ["b"], "seed": 3, "steps": 10, "threads": 2}
    assert pw.pretrain_slides(section, ["a", "b", "c"], ["a", "b", "c", "d"]) == ["a", "c"]
    with pytest.raises(ValueError, match="not in the cohort"):
        pw.pretrain_slides({**section, "slides": ["zz"]}, ["a"], ["a"])
    assert pw.pretrain_flags(section) == "--pretrain-seed 3 --steps 10"


def test_dag_time_wiring_imports_no_slide_reader_image_library_h5py_or_torch():
    code = (
        "import sys\n"
        "import pipeline.wiring.cohort, pipeline.wiring.flags, pipeline.wiring.layout, pipeline.wiring.gdc\n"
        "import pipeline.wiring.pretrain, pipeline.pretrain.attributes\n"
        "import pipeline.prompt_files, pipeline.training.registry, pipeline.training.tasks\n"
        "from pipeline.training.methods import list_methods; list_methods()\n"
        "import yaml; pipeline.wiring.cohort.tasks(yaml.safe_load(open('config.yaml')))\n"
        "heavy = ['openslide', 'cv2', 'h5py', 'tifffile', 'torch', 'PIL', 'skimage', 'matplotlib', 'imagecodecs']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_config_lists_replace_instead_of_merging(tmp_path):
    """A user's --configfile with its own tasks and backbones drops the demo's (lists replace, dicts merge)."""
    config = {**SMALL, "tasks": [{"name": "other", "labels": ["glandular", "solid"], "prompts": str(
        REPO / "pipeline" / "data" / "prompts" / "demo.json")}], "features": {"backbones": [QUILT]}}
    out = dry_run_jobs(tmp_path, config, "train_all")
    assert "results/models/other/quiltnet/4shot/results.csv" in out
    assert "models/demo/" not in out and "features/tiny/" not in out


def test_duplicate_task_names_are_refused(tmp_path):
    task = {"name": "demo", "labels": ["glandular", "solid"]}
    proc = run_snakemake(tmp_path, {**SMALL, "tasks": [task, task]}, "-n", check=False)
    assert proc.returncode != 0 and "task 'demo' is listed twice" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_two_backbones_train_every_method_and_write_the_cross_backbone_comparison(trained_demo):
    """Extracted in chunk jobs of 4 slides, each parent decoded once for both backbones, through to prediction (the
    session's trained_demo run: SMALL with tiny and quiltnet, and tiny_hlss training HiVE-MIL only)."""
    results = trained_demo / "results"
    assert len(list((results / "benchmarks" / "extract" / "chunks").glob("*.tsv"))) == 8 // 4  # the chunk jobs
    for backbone in ("tiny", "quiltnet"):
        run = results / "models" / "demo" / backbone / "1shot"
        table = pd.read_csv(run / "results.csv")
        assert sorted(set(table["method"])) == ["abmil_5x", "hivemil", "mean_pool", "zeroshot"]
        assert set(table["backbone"]) == {backbone} and set(table["shots"]) == {1}
        for method in ("hivemil", "abmil_5x", "zeroshot", "mean_pool"):
            assert (run / method / "checkpoints" / "fold1.pt").exists()
            preds = pd.read_csv(results / "predictions" / "demo" / backbone / "1shot" / method / "predictions.csv")
            assert len(preds) == 8 and preds["n_models"].eq(2).all()
    comparison = pd.read_csv(results / "models" / "demo" / "comparison.csv")
    assert len(comparison) == 4 + 4 + 1 and set(comparison["backbone"]) == {"tiny", "quiltnet", "tiny_hlss"}
    assert set(comparison["method"][comparison["backbone"] == "tiny_hlss"]) == {"hivemil"}
    assert comparison["AUC"].str.contains(" ± ").all()
    md = (results / "models" / "demo" / "comparison.md").read_text()
    assert "| hivemil | quiltnet | 1 |" in md and "| zeroshot | tiny | 1 |" in md
    # zero-shot reads the text embeddings of its backbone: the checkpoint's buffers are those texts
    heat = results / "predictions" / "demo" / "tiny" / "1shot" / "hivemil" / "heatmaps"
    assert len(list(heat.glob("*_5x.png"))) == 8


def test_a_five_task_asks_the_llm_about_the_reports_and_trains_on_the_answers(tmp_path):
    """Wiring of FiVE with an LLM: reports from a table, the descriptions job with the endpoint (the key by its file
    only), and FiVE's train job reading the question set and the descriptions; other methods read neither."""
    table = tmp_path / "reports.csv"
    table.write_text("case_id,text\n")
    config = {**SMALL, "tasks": [{**SMALL["tasks"][0], "methods": ["five", "abmil_5x"]}],
              "reports": {"source": "csv", "csv": str(table)},
              "llm": {"base_url": "http://127.0.0.1:9/v1", "model": "qwen-local", "key_file": str(tmp_path / "k")}}
    out = dry_run_jobs(tmp_path, config, "train_all")
    lines = out.splitlines()
    [reports] = [x for x in lines if " -m pipeline reports " in x]
    [described] = [x for x in lines if " -m pipeline descriptions " in x]
    assert f"--source csv --sheet results/cohort/sheet.csv --table {table}" in reports
    assert "--reports-index results/reports/index.csv --cache-dir results/descriptions/demo/cache" in described
    assert "--base-url http://127.0.0.1:9/v1 --model qwen-local" in described and f"--key-file {tmp_path / 'k'}" in described
    assert "--out results/descriptions/demo/descriptions.csv" in described and "--from-csv" not in described
    trains = {m: x for x in lines if " -m pipeline train " in x for m in ("five", "abmil_5x") if f"--method {m} " in x}
    assert "--questions results/cohort/questions/demo.json --descriptions results/descriptions/demo/descriptions.csv" \
        in trains["five"]
    assert "--descriptions" not in trains["abmil_5x"]


def test_the_reports_source_follows_the_slides_and_refuses_what_cannot_work():
    from pipeline.reports.collect import SOURCES
    from pipeline.wiring import cohort as ws

    assert SCHEMA["properties"]["reports"]["properties"]["source"]["enum"] == ["auto", *SOURCES]
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    assert ws.description_tasks(base) == ["demo"] and ws.reports_source(base) == "demo"
    assert ws.description_table(base, ws.tasks(base)["demo"], "results") == "results/demo/descriptions.csv"
    assert ws.reports_source({**base, "source": "gdc"}) == "gdc"
    assert ws.description_table({**base, "source": "gdc"}, ws.tasks(base)["demo"], "results") == ""  # the LLM
    with pytest.raises(ValueError, match="need each patient's report"):
        ws.reports_source({**base, "source": "local"})
    with pytest.raises(ValueError, match="reports.source is demo .* slides come from 'gdc'"):
        ws.reports_source({**base, "source": "gdc", "reports": {"source": "demo", "csv": ""}})
    without_five = {**base, "tasks": [{"name": "demo", "labels": ["glandular", "solid"]}]}
    assert ws.description_tasks(without_five) == [] and ws.reports_source({**without_five, "source": "local"})


@pytest.mark.workflow
def test_the_demo_writes_its_reports_and_precomputed_descriptions_without_an_llm(tmp_path):
    """The default config trains FiVE on the demo task; descriptions_all runs the demo's reports, the reports stage
    and the descriptions stage (from the precomputed table: no LLM is reachable here) for real."""
    from pipeline.wiring import cohort as ws

    assert "five" in ws.tasks(yaml.safe_load((REPO / "config.yaml").read_text()))["demo"]["methods"]
    run_snakemake(tmp_path, {"demo": {"slides_per_class": 2}, "llm": {"base_url": "http://127.0.0.1:9/v1"}},
                  "descriptions_all")
    results = tmp_path / "results"
    index = pd.read_csv(results / "reports" / "index.csv", dtype=str, keep_default_na=False)
    cases = sorted(index["case_id"][index["status"] == "ok"])
    assert len(cases) == 4 and set(index["status"][index["case_id"] == "CMU-1-Small-Region"]) == {"none"}
    assert "Microscopic description" in (results / "reports" / "texts" / f"{cases[0]}.txt").read_text()
    described = pd.read_csv(results / "descriptions" / "demo" / "descriptions.csv", dtype=str)
    assert sorted(described["case_id"]) == cases and list(described.columns)[1] == "growth_pattern"
    assert (results / "cohort" / "questions" / "demo.json").exists() and not (results / "descriptions" / "demo" / "cache").exists()
