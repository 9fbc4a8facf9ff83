"""Label trees: checked once, turned into task classes and split strata, refused with the offending labels named."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.labels import LabelTree, parse_tree_args
from pipeline.splits import SplitOutputs, make_splits, read_split_csv
from pipeline.training.methods import get_method
from pipeline.training.tasks import get_task_type, list_task_types
from pipeline.wiring import cohort as ws

from cohorts import write_case_sheet

TREE = LabelTree.from_mapping({"lung": ["LUAD", "LUSC"], "kidney": ["CCRCC", "CHRCC", "PRCC"]})
REPO_CONFIG = yaml.safe_load(open(ws.SCHEMA.parents[2] / "config.yaml"))


def test_tree_order_parents_and_cli_round_trip():
    assert TREE.coarse == ("lung", "kidney")
    assert TREE.fine == ("LUAD", "LUSC", "CCRCC", "CHRCC", "PRCC")
    assert TREE.parent == (0, 0, 1, 1, 1)
    assert TREE.coarse_of("PRCC") == "kidney"
    assert parse_tree_args(TREE.to_args()) == TREE
    assert parse_tree_args([]) is None


def test_a_fine_label_under_two_coarse_classes_is_refused_by_name():
    with pytest.raises(PipelineError, match=r"'LUAD' under \['lung', 'kidney'\]"):
        LabelTree.from_mapping({"lung": ["LUAD", "LUSC"], "kidney": ["LUAD", "PRCC"]})
    with pytest.raises(PipelineError, match="both a coarse class and a fine label"):
        LabelTree.from_mapping({"lung": ["lung", "LUSC"], "kidney": ["PRCC"]})
    with pytest.raises(PipelineError, match="coarse=fine1"):
        parse_tree_args(["lung:LUAD"])


def _config(*tasks: dict) -> dict:
    return {**REPO_CONFIG, "tasks": list(tasks)}


def test_tasks_get_their_classes_sheet_labels_and_tree_args_from_the_tree():
    tree = {"lung": ["LUAD", "LUSC"], "kidney": ["CCRCC", "PRCC"]}
    found = ws.tasks(_config({"name": "organ", "type": "classification", "tree": tree},
                             {"name": "subtype", "type": "hierarchical", "tree": tree},
                             {"name": "flat", "labels": ["IDC", "ILC"]}))
    assert found["organ"]["labels"] == ["lung", "kidney"]
    assert found["subtype"]["labels"] == ["LUAD", "LUSC", "CCRCC", "PRCC"]
    assert found["organ"]["sheet_labels"] == found["subtype"]["sheet_labels"] == ["LUAD", "LUSC", "CCRCC", "PRCC"]
    split_tree = {name: ws.task_type(t).split_tree_args(t) for name, t in found.items()}
    assert split_tree["organ"] == ["lung=LUAD,LUSC", "kidney=CCRCC,PRCC"]
    assert split_tree["subtype"] == []  # stratified by the fine labels themselves
    assert found["subtype"]["methods"] == list(get_task_type("hierarchical").default_methods)
    assert ws.dataset_labels(_config({"name": "a", "type": "hierarchical", "tree": tree},
                                     {"name": "b", "labels": ["IDC", "ILC"]})) == ["LUAD", "LUSC", "CCRCC", "PRCC",
                                                                                  "IDC", "ILC"]


@pytest.mark.parametrize("task, message", [
    ({"name": "t", "type": "hierarchical", "labels": ["a", "b"]}, "needs a `tree"),
    ({"name": "t", "type": "hierarchical", "tree": {"x": ["a", "b"], "y": ["b"]}}, "'b' under ['x', 'y']"),
    ({"name": "t", "type": "hierarchical", "tree": {"x": ["a"], "y": ["b"]}, "labels": ["b", "a"]}, "disagree"),
    ({"name": "t", "type": "classification", "tree": {"x": ["a"], "y": ["b"]}, "methods": ["hmil"]},
     "method(s) ['hmil'] do not support"),
])
def test_bad_task_configs_are_refused_before_any_job(task, message):
    with pytest.raises((ValueError, PipelineError)) as err:
        ws.tasks(_config(task))
    assert message in str(err.value)


def test_default_methods_support_their_task_type():
    for task_type in list_task_types():
        methods = get_task_type(task_type).default_methods
        assert methods and all(task_type in get_method(m).task_types for m in methods), task_type


def test_splits_of_a_coarse_task_stratify_by_coarse_class_and_of_a_tree_task_by_fine_label(tmp_path):
    ds = write_case_sheet(tmp_path / "dataset.csv", {lab: [1] * 8 for lab in TREE.fine})
    label_of = dict(zip(*(pd.read_csv(ds)[c] for c in ("slide_id", "label"))))
    organ_files = SplitOutputs.of([tmp_path / "organ.csv"], tmp_path / "organ.json")
    make_splits(ds, {2: organ_files}, "organ", labels=list(TREE.coarse), label_tree=TREE)
    organ = read_split_csv(tmp_path / "organ.csv")
    assert Counter(TREE.coarse_of(label_of[s]) for s in organ.train) == {"lung": 2, "kidney": 2}
    make_splits(ds, {2: SplitOutputs.of([tmp_path / "subtype.csv"], tmp_path / "subtype.json")}, "subtype",
                labels=list(TREE.fine))
    subtype = read_split_csv(tmp_path / "subtype.csv")
    assert Counter(label_of[s] for s in subtype.train) == dict.fromkeys(TREE.fine, 2)


def test_methods_command_lists_each_method_with_its_task_types(capsys):
    from pipeline.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    hmil = out[out.index("hmil\n"):].splitlines()
    assert hmil[2] == "  task types: hierarchical"
    assert out.rstrip().endswith("task types: classification, hierarchical, survival")
    hila = out[out.index("hila\n"):].splitlines()
    assert hila[2] == "  task types: survival" and "text_tower" in hila[3]


def test_a_local_sheet_label_of_no_task_is_refused_before_any_job(tmp_path, fixtures):
    """A typo (`Large_cell`) is listed with the sheet's other problems and a hint, while the DAG is built."""
    import shutil

    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ("a", "b"):
        shutil.copy(fixtures / "small.svs", slides / f"{sid}.svs")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slide_id,case_id,label\na,P1,regular_glands\nb,P2,Large_cell\n")
    config = {**REPO_CONFIG, "source": "local", "local": {"sheet": str(sheet), "slides_dir": str(slides)}}
    with pytest.raises(PipelineError, match=r"slide 'b'\): unknown label 'Large_cell'.*did you mean 'large_cell'"):
        ws.cohort_slides(config)
    sheet.write_text("slide_id,case_id,label\na,P1,regular_glands\nb,P2,large_cell\n")
    assert sorted(ws.cohort_slides(config)) == ["a", "b"]

