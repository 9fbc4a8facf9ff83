"""HLSS before/after evaluation: weighted kNN, patient-grouped folds, the kNN protocol's levels, the before/after
table (kNN + zero-shot) and the `hlss-eval` command."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.pretrain.knn import knn_accuracy, knn_scores, patient_folds, sample_patch_rows

from cohorts import write_rotated_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 16


# --- knn_scores ---------------------------------------------------------------------------------------------


def test_knn_scores_weights_the_nearest_neighbours_and_normalises_rows():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])  # cosine to (1, 0): 1, 0, 0.707; lengths do not matter
    labels = np.array([0, 1, 0])
    queries = np.array([[2.0, 0.0], [0.0, 5.0]])
    s = math.sqrt(0.5)

    two = knn_scores(bank, labels, queries, n_classes=3, k=2, temperature=0.5)
    assert two.shape == (2, 3)
    np.testing.assert_allclose(two[0], [1.0, 0.0, 0.0])  # neighbours (1,0) and (3,3): both class 0
    w1, w0 = math.exp(1 / 0.5), math.exp(s / 0.5)  # second query: (0,1) for class 1, (3,3) for class 0
    np.testing.assert_allclose(two[1], [w0 / (w0 + w1), w1 / (w0 + w1), 0.0])

    every = knn_scores(bank, labels, queries, n_classes=2, k=3, temperature=1.0)
    c0, c1 = math.e + math.exp(s), 1.0
    np.testing.assert_allclose(every[0], [c0 / (c0 + c1), c1 / (c0 + c1)])
    np.testing.assert_allclose(every.sum(1), 1.0)
    # k beyond the bank is clipped to it (and chunking does not change anything)
    np.testing.assert_allclose(knn_scores(bank, labels, queries, n_classes=2, k=50, temperature=1.0), every)


def test_knn_scores_refuses_an_empty_bank_and_bad_labels():
    with pytest.raises(PipelineError, match="empty"):
        knn_scores(np.zeros((0, 2)), np.zeros(0), np.ones((1, 2)), 2)
    with pytest.raises(PipelineError, match="labels"):
        knn_scores(np.ones((2, 2)), np.array([0, 2]), np.ones((1, 2)), 2)


# --- patient_folds ------------------------------------------------------------------------------------------


def _cohort_slides(n_patients: int, n_classes: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """(case id, label) per slide; patients have 1-3 slides of their class."""
    rng = np.random.default_rng(seed)
    cases, labels = [], []
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 4))):
            cases.append(f"case{p}")
            labels.append(p % n_classes)
    return cases, labels


def test_patient_folds_keep_each_patient_on_one_side_and_stratify():
    cases, labels = _cohort_slides(40, 3)
    folds = patient_folds(cases, labels, n_folds=5, seed=1)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    for case in set(cases):
        assert len({f for c, f in zip(cases, folds) if c == case}) == 1, case
    labels_arr = np.asarray(labels)
    for fold in range(5):
        held = labels_arr[folds == fold]
        assert set(held.tolist()) == {0, 1, 2}  # every class held out in every fold
        patients = {c for c, f in zip(cases, folds) if f == fold}
        assert 5 <= len(patients) <= 11  # 40 patients over 5 folds
    assert np.array_equal(folds, patient_folds(cases, labels, 5, seed=1))  # seeded


def test_patient_folds_shrink_for_a_small_class_and_refuse_a_single_patient(caplog):
    cases = ["a", "b", "c", "d", "e", "f", "x", "y", "z"]
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    with caplog.at_level(logging.WARNING, logger="pipeline.pretrain.knn"):
        folds = patient_folds(cases, labels, n_folds=5, seed=0)
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    assert "using 3 folds instead of 5" in caplog.text
    with pytest.raises(PipelineError, match="at least 2 patients"):
        patient_folds(["a", "b", "c"], [0, 0, 1], n_folds=5, seed=0)


# --- knn_accuracy -------------------------------------------------------------------------------------------


def _patches(rng, centre: np.ndarray, n: int, noise: float) -> np.ndarray:
    return centre + noise * rng.normal(size=(n, len(centre)))


def test_knn_accuracy_finds_a_clear_class_signal_and_not_noise():
    rng = np.random.default_rng(0)
    protos = 3 * np.eye(3, DIM)
    feats, cases, labels = {}, {}, {}
    for p in range(15):
        for s in range(2):
            sid = f"p{p}-s{s}"
            feats[sid] = _patches(rng, protos[p % 3], 30, 1.0)
            cases[sid], labels[sid] = f"p{p}", p % 3
    clear = knn_accuracy(feats, cases, labels, 3, folds=5, k=20)
    assert clear["patch"] > 0.9 and clear["slide"] == 1.0 and clear["patient"] == 1.0
    assert (clear["n_patch"], clear["n_slide"], clear["n_patient"], clear["folds"]) == (900, 30, 15, 5)

    noise = {sid: rng.normal(size=(50, DIM)) for sid in feats}
    two = {sid: labels[sid] % 2 for sid in feats}
    chance = knn_accuracy(noise, cases, two, 2, folds=5, k=20, seed=3)
    assert 0.35 < chance["patch"] < 0.65
    assert 0.1 < chance["slide"] < 0.9


def test_knn_accuracy_pools_patches_over_a_patients_slides():
    """Per patient: slide A all its class's look, slide B 30% (the rest the other class's look). A patch is right
    65% of the time, slide B is lost, yet the patient's pooled patches are right. Six folds hold out one patient
    per class, so the bank stays balanced."""
    rng = np.random.default_rng(1)
    protos = np.eye(2, DIM)
    feats, cases, labels = {}, {}, {}
    for p in range(12):
        c = p % 2
        for sid, n_own in ((f"p{p}-A", 20), (f"p{p}-B", 6)):
            own = _patches(rng, protos[c], n_own, 0.01)
            other = _patches(rng, protos[1 - c], 20 - n_own, 0.01)
            feats[sid], cases[sid], labels[sid] = np.concatenate([own, other]), f"p{p}", c
    acc = knn_accuracy(feats, cases, labels, 2, folds=6, k=10_000, temperature=0.1)
    assert acc["patch"] == pytest.approx(0.65, abs=0.02)
    assert acc["slide"] == pytest.approx(0.5)
    assert acc["patient"] == 1.0


def test_patch_sample_is_seeded_by_slide():
    rows = sample_patch_rows("s1", 1000, 50, seed=0)
    assert len(rows) == 50 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_patch_rows("s1", 1000, 50, seed=0))
    assert not np.array_equal(rows, sample_patch_rows("s2", 1000, 50, seed=0))
    assert np.array_equal(sample_patch_rows("s1", 30, 50, seed=0), np.arange(30))


def test_knn_defaults_have_one_home():
    """knn.DEFAULT_* are what the command's flags default to and what the config schema documents."""
    from pathlib import Path

    import yaml

    from pipeline.cli import build_parser
    from pipeline.pretrain import knn

    sides = [flag for side in ("before", "after") for part, value in
             (("", side), ("-20x", "a.h5"), ("-5x", "b.h5"), ("-hierarchical", "c.h5"), ("-text", "t.h5"))
             for flag in (f"--{side}{part}", value)]
    args = build_parser().parse_args(["hlss-eval", "--task", "t", "--dataset", "d.csv", "--out-csv", "o.csv",
                                      "--out-md", "o.md", *sides])
    assert (args.k, args.temperature, args.folds, args.patches_per_slide) == (
        knn.DEFAULT_K, knn.DEFAULT_TEMPERATURE, knn.DEFAULT_FOLDS, knn.DEFAULT_PATCHES_PER_SLIDE)
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml")
                            .read_text())["properties"]["pretrain"]["properties"]
    assert (schema["knn_k"]["default"], schema["knn_folds"]["default"], schema["knn_patches_per_slide"]["default"]) \
        == (knn.DEFAULT_K, knn.DEFAULT_FOLDS, knn.DEFAULT_PATCHES_PER_SLIDE)


# --- evaluate_pretraining and the command --------------------------------------------------------------------


def _sides(root, before, after):
    from pipeline.pretrain.evaluation import backbone_files

    return [backbone_files(name, files["20x"], files["5x"], files["hier"], text)
            for name, (files, text) in (("tiny", before), ("tiny_hlss", after))]


def test_evaluate_pretraining_table_before_vs_after(tmp_path, caplog):
    from pipeline.pretrain.evaluation import evaluate_pretraining, load_eval_task, slide_cases, write_evaluation

    before, after = write_rotated_cohort(tmp_path, DIM, skip_after=("case3-slide1",))
    task = load_eval_task("classification", "synthetic", tmp_path / "dataset.csv", tmp_path / "prompts.json", None,
                          before[1])
    with caplog.at_level(logging.WARNING, logger="pipeline.pretrain.evaluation"):
        table = evaluate_pretraining(task, slide_cases(tmp_path / "dataset.csv"), *_sides(tmp_path, before, after),
                                     folds=4, k=20, patches_per_slide=30)
    assert "case3-slide1" in caplog.text and "tiny_hlss" in caplog.text
    assert list(table.columns) == ["task", "metric", "level", "n", "tiny", "tiny_hlss", "change"]
    assert list(zip(table["metric"], table["level"])) == [
        ("knn_accuracy", "patch"), ("knn_accuracy", "slide"), ("knn_accuracy", "patient"),
        ("zeroshot_accuracy", "slide"), ("zeroshot_accuracy", "patient"),
    ]
    by = table.set_index(["metric", "level"])
    assert by.loc[("knn_accuracy", "slide"), "n"] == 12  # 13 slides, one without 'after' features
    assert by.loc[("knn_accuracy", "patient"), "n"] == 8
    assert by.loc[("zeroshot_accuracy", "slide"), "n"] == 12
    np.testing.assert_allclose(table["change"], table["tiny_hlss"] - table["tiny"])
    knn = table[table["metric"] == "knn_accuracy"]
    np.testing.assert_allclose(knn["tiny"], knn["tiny_hlss"], atol=1e-9)  # a rotation keeps every cosine
    assert by.loc[("knn_accuracy", "patient"), "tiny"] == 1.0
    assert by.loc[("zeroshot_accuracy", "slide"), "tiny"] == 1.0
    assert by.loc[("zeroshot_accuracy", "slide"), "change"] < -0.2  # rotated features lost their texts

    write_evaluation(table, tmp_path / "out" / "eval.csv", tmp_path / "out" / "eval.md", "HLSS on synthetic")
    assert pd.read_csv(tmp_path / "out" / "eval.csv").shape == (5, 7)
    md = (tmp_path / "out" / "eval.md").read_text()
    assert md.startswith("# HLSS on synthetic\n\n") and "k = 20" in md and "4-fold" in md and "30 sampled" in md
    assert "| task | metric | level | n | tiny | tiny_hlss | change |" in md and "| 1.000 |" in md
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_evaluate_pretraining_refuses_other_patches(tmp_path):
    from pipeline.pretrain.evaluation import evaluate_pretraining, load_eval_task, slide_cases

    before, after = write_rotated_cohort(tmp_path, DIM, shift_after=("case4-slide0",))
    task = load_eval_task("classification", "synthetic", tmp_path / "dataset.csv", None, None, before[1])
    with pytest.raises(PipelineError, match="slide 'case4-slide0'.*20x coords"):
        evaluate_pretraining(task, slide_cases(tmp_path / "dataset.csv"), *_sides(tmp_path, before, after), k=20)


def test_hlss_eval_command_writes_csv_and_md(tmp_path):
    from pipeline.cli import main

    (b_files, b_text), (a_files, a_text) = write_rotated_cohort(tmp_path, DIM)
    out = tmp_path / "eval"
    # a hierarchical task (fine labels = the prompt classes); classes and texts from the text file (no --prompts)
    argv = ["hlss-eval", "--task", "synthetic", "--dataset", str(tmp_path / "dataset.csv"),
            "--task-type", "hierarchical", "--label-tree", "organ=alpha,beta",
            "--before", "tiny", "--after", "tiny_hlss", "--folds", "3", "--k", "10", "--patches-per-slide", "20",
            "--threads", "1", "--out-csv", str(out / "hlss.csv"), "--out-md", str(out / "hlss.md"),
            "--before-text", str(b_text), "--after-text", str(a_text)]
    for side, files in (("before", b_files), ("after", a_files)):
        argv += [f"--{side}-20x", *files["20x"], f"--{side}-5x", *files["5x"], f"--{side}-hierarchical", *files["hier"]]
    assert main(argv) == 0
    table = pd.read_csv(out / "hlss.csv")
    assert list(table.columns) == ["task", "metric", "level", "n", "tiny", "tiny_hlss", "change"]
    assert set(table["task"]) == {"synthetic"} and len(table) == 5
    assert "3-fold" in (out / "hlss.md").read_text()
    same = argv.copy()
    same[same.index("tiny_hlss")] = "tiny"
    assert main(same) == 1  # the two backbones must differ: an error message, no traceback
