"""dataset.csv, patient-level few-shot splits in HiVE-MIL's format, and the text-prompt files."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.dataset import (
    CohortError,
    build_dataset,
    read_dataset,
    read_sheet,
    slide_id_of,
    survival_table,
    write_dataset,
)
from pipeline.prompt_files import (
    PromptError,
    check_prompts,
    load_prompts,
    parse_prompts,
    resolve_prompt_file,
    shipped_prompt_files,
)
from pipeline.splits import (
    CaseLeakError,
    MissingClassError,
    NotEnoughSlidesError,
    Split,
    SplitError,
    SplitOutputs,
    UnknownSlideError,
    draw_partitions,
    folder_outputs,
    import_splits,
    make_splits,
    read_split_csv,
    split_path,
    write_split_csv,
)

from cohorts import write_case_sheet, write_placeholder_features, write_placeholder_patches

REPO = Path(__file__).resolve().parents[1]
TASK_LABELS = {
    "demo": ["glandular", "solid"],
    "tcga_nsclc": ["LUAD", "LUSC"],
    "tcga_brca": ["IDC", "ILC"],
    "tcga_rcc": ["CCRCC", "CHRCC", "PRCC"],
    "demo_tree": ["regular_glands", "atypical_glands", "small_cell", "large_cell"],
    "tcga_organ": ["LUAD", "LUSC", "CCRCC", "CHRCC", "PRCC", "IDC", "ILC"],
}


# --- cohorts built for the tests ------------------------------------------------------------------------------


def multi_slide_cohort(tmp_path: Path) -> Path:
    """Three classes of unequal size, cases with 1 to 3 slides (several slides per patient)."""
    rng = np.random.default_rng(0)
    sizes = {lab: [int(x) for x in rng.choice([1, 1, 2, 3], size=n)] for lab, n in (("A", 40), ("B", 25), ("C", 18))}
    return write_case_sheet(tmp_path / "dataset.csv", sizes)


def demo_like(tmp_path: Path) -> Path:
    """The demo cohort's shape: 8 slides per class, the first two of a class from one patient."""
    return write_case_sheet(tmp_path / "dataset.csv", {"glandular": [2, 1, 1, 1, 1, 1, 1], "solid": [2, 1, 1, 1, 1, 1, 1]})


def target(frac: float, n: int) -> int:
    return max(1, math.floor(frac * n + 0.5))


# --- dataset.csv ------------------------------------------------------------------------------------------------


def _patches(path: Path, mag: float | None) -> None:
    """A one-patch file at 0.25 um/px, its level-0 magnification `mag` (None: not recorded)."""
    write_placeholder_patches(path, mpp=0.25, **({} if mag is None else {"level0_magnification": mag}))


def _features(root: Path, slide: str, hierarchical: bool = True) -> tuple[Path, Path]:
    """A slide's one-row root/f5 file and (unless not `hierarchical`) its root/fh file."""
    f5 = root / "f5" / f"{slide}.h5"
    fh = root / "fh" / f"{slide}.h5"
    write_placeholder_features(f5, fh if hierarchical else None)
    return f5, fh


def test_dataset_keeps_complete_slides_and_lists_each_dropped_one_with_its_reason(tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "slide_id,case_id,label,file\n"
        "TCGA-AA.1,P1,LUAD,a.svs\n"       # complete, 40x (id with a dot)
        "s2,P2,LUSC,b.svs\n"               # complete, 20x
        "s3,P3,,c.svs\n"                   # unlabelled (like the demo's real slide)
        "s4,P4,LUAD,d.svs\n"               # no hierarchical file
        "s5,P5,KIRC,e.svs\n"               # label not configured
        "s6,,LUSC,f.svs\n"                 # no case id
        "s7,P7,LUAD,g.svs\n"               # patches file without level0_magnification
        "s8,P8,LUAD,h.svs\n"               # no patches file at all
    )
    patches, f5s, fhs = [], [], []
    for slide, mag in (("TCGA-AA.1", 40.0), ("s2", 20), ("s3", 40), ("s4", 40), ("s5", 40), ("s6", 40), ("s7", None)):
        _patches(tmp_path / "p" / f"{slide}.h5", mag)
        patches.append(tmp_path / "p" / f"{slide}.h5")
        f5, fh = _features(tmp_path, slide, hierarchical=slide != "s4")
        f5s.append(f5)
        fhs.append(fh)
    fhs.append(tmp_path / "fh" / "s8.h5")  # listed but not there: counts as missing, not as a crash
    f5s.append(_features(tmp_path, "s8")[0])

    cohort = write_dataset(sheet, patches, {"5x features": f5s, "hierarchical features": fhs},
                           tmp_path / "out" / "dataset.csv", tmp_path / "out" / "dropped.csv", labels=["LUAD", "LUSC"])

    text = (tmp_path / "out" / "dataset.csv").read_text()
    assert text.splitlines()[0] == "case_id,slide_id,label,level0_mag,event,time_days"
    assert text.splitlines()[1:] == ["P1,TCGA-AA.1,LUAD,40,,", "P2,s2,LUSC,20,,"]
    dropped = pd.read_csv(tmp_path / "out" / "dropped.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(dropped["slide_id"], dropped["reason"]))
    assert list(dropped.columns) == ["slide_id", "case_id", "label", "reason"]
    assert set(reasons) == {"s3", "s4", "s5", "s6", "s7", "s8"}
    assert "no label" in reasons["s3"]
    assert reasons["s4"] == "no hierarchical features file"
    assert "'KIRC' is not one of the configured labels" in reasons["s5"]
    assert "no case_id" in reasons["s6"]
    assert "level0_magnification" in reasons["s7"]
    assert "no patches" in reasons["s8"]
    assert len(cohort.dataset) == 2


def test_dataset_command_writes_both_files_and_fails_clearly_when_nothing_is_left(tmp_path, capsys):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slide_id,case_id,label\nx1,P1,A\n")
    _patches(tmp_path / "p" / "x1.h5", 40)
    f5, fh = _features(tmp_path, "x1")
    args = ["dataset", "--sheet", str(sheet), "--patches", str(tmp_path / "p" / "x1.h5"), "--features-5x", str(f5),
            "--hierarchical", str(fh), "--out", str(tmp_path / "d.csv"), "--dropped", str(tmp_path / "x.csv")]
    assert main(args + ["--labels", "A", "B"]) == 0
    assert (tmp_path / "d.csv").read_text().splitlines() == ["case_id,slide_id,label,level0_mag,event,time_days",
                                                            "P1,x1,A,40,,"]
    assert main(args[:-4] + ["--out", str(tmp_path / "e.csv"), "--dropped", str(tmp_path / "y.csv"),
                             "--labels", "B"]) == 1
    err = capsys.readouterr().err
    assert "no slide of" in err and "x1: label 'A' is not one of the configured labels" in err
    assert not (tmp_path / "e.csv").exists()
    assert "x1" in (tmp_path / "y.csv").read_text()


# --- survival labels in dataset.csv ----------------------------------------------------------------------------


def _survival_cohort(tmp_path: Path) -> list[str]:
    """A sheet with survival labels (blank, noted, disagreeing within a case) and every slide's files; CLI args."""
    (tmp_path / "sheet.csv").write_text(
        "slide_id,case_id,label,file,event,time_days,follow_up\n"
        "a1,P1,A,x,1,400,\n"                                   # P1: two slides that agree
        "a2,P1,A,x,1,400,\n"
        "b1,P2,B,x,0,0,\n"                                      # time 0 is usable
        "c1,P3,A,x,,,dead without days_to_death\n"              # the GDC's reason, as written in the sheet
        "d1,P4,B,x,,,\n"                                        # blank, no note
        "e1,P5,A,x,0,100,\n"                                    # P5: slides disagree
        "e2,P5,A,x,1,250,\n"
        "f1,P6,A,x,0,30,\n"                                     # P6: one slide labelled, one blank
        "f2,P6,A,x,,,\n"
        "g1,P7,KIRC,x,1,5,\n"                                   # dropped for its label: no survival row
    )  # fmt: skip
    slides = ["a1", "a2", "b1", "c1", "d1", "e1", "e2", "f1", "f2", "g1"]
    args = ["dataset", "--sheet", str(tmp_path / "sheet.csv"), "--labels", "A", "B",
            "--out", str(tmp_path / "dataset.csv"), "--dropped", str(tmp_path / "dropped.csv")]  # fmt: skip
    for slide in slides:
        _patches(tmp_path / "p" / f"{slide}.h5", 20)
        _features(tmp_path, slide)
    for flag, folder in (("--patches", "p"), ("--features-5x", "f5"), ("--hierarchical", "fh")):
        args += [flag, *(str(tmp_path / folder / f"{s}.h5") for s in slides)]
    return args


def test_dataset_carries_survival_labels_and_lists_what_survival_tasks_cannot_use(tmp_path):
    args = _survival_cohort(tmp_path)
    assert main(args + ["--survival"]) == 0
    text = (tmp_path / "dataset.csv").read_text().splitlines()
    assert text[0] == "case_id,slide_id,label,level0_mag,event,time_days"
    assert text[1:4] == ["P1,a1,A,20,1,400", "P1,a2,A,20,1,400", "P2,b1,B,20,0,0"]
    assert "P3,c1,A,20,," in text
    dataset = read_dataset(tmp_path / "dataset.csv")
    assert len(dataset) == 9  # every labelled slide stays, survival label or not
    dropped = pd.read_csv(tmp_path / "dropped.csv", dtype=str, keep_default_na=False)
    reasons = dict(zip(dropped["slide_id"], dropped["reason"]))
    disagree = ("survival tasks only: slides of case 'P5' disagree on event/time_days "
                "(event 0, time_days 100 vs event 1, time_days 250)")  # fmt: skip
    assert reasons == {
        "g1": "label 'KIRC' is not one of the configured labels ['A', 'B']",
        "c1": "survival tasks only: no usable follow-up (dead without days_to_death)",
        "d1": "survival tasks only: no usable follow-up (event/time_days blank in the sheet)",
        "e1": disagree,
        "e2": disagree,
        "f2": "survival tasks only: no usable follow-up (event/time_days blank in the sheet)",
    }
    table = survival_table(dataset)
    assert table["case_id"].tolist() == ["P1", "P2", "P6"]  # P3, P4 blank; P5 disagrees
    assert table["event"].tolist() == [1, 0, 0] and table["event"].dtype == int
    assert table["time_days"].tolist() == [400.0, 0.0, 30.0] and table["time_days"].dtype == float
    assert table["slides"].tolist() == [["a1", "a2"], ["b1"], ["f1"]]


def test_without_a_survival_task_dropped_csv_has_no_survival_rows(tmp_path):
    assert main(_survival_cohort(tmp_path)) == 0
    dropped = pd.read_csv(tmp_path / "dropped.csv", dtype=str, keep_default_na=False)
    assert dropped["slide_id"].tolist() == ["g1"]
    assert read_dataset(tmp_path / "dataset.csv")["time_days"].notna().sum() == 6  # still carried


def test_read_dataset_survival_columns_are_floats_and_optional(tmp_path):
    (tmp_path / "ours.csv").write_text(
        "case_id,slide_id,label,level0_mag,event,time_days\nP1,a,A,20,1,400\nP2,b,A,20,,\n"
    )
    ours = read_dataset(tmp_path / "ours.csv")
    assert ours["event"].tolist()[0] == 1.0 and math.isnan(ours["event"].tolist()[1])
    assert ours["time_days"].dtype == float and ours["slide_id"].tolist() == ["a", "b"]
    hivemil = write_case_sheet(tmp_path / "hivemil.csv", {"A": [1, 2]})  # HiVE-MIL's own columns only
    theirs = read_dataset(hivemil)
    assert "event" not in theirs.columns and len(theirs) == 3
    assert survival_table(theirs).empty and list(survival_table(theirs).columns) == [
        "case_id", "event", "time_days", "slides"]
    (tmp_path / "bad.csv").write_text("case_id,slide_id,label,event,time_days\nP1,a,A,2,4\nP2,b,A,1,-1\n")
    with pytest.raises(CohortError, match=r"unusable event for slide\(s\) \['a'\]"):
        read_dataset(tmp_path / "bad.csv")


def test_splits_read_a_dataset_with_survival_columns(tmp_path):
    ds = write_case_sheet(tmp_path / "dataset.csv", {"A": [1] * 8, "B": [1] * 8})
    frame = pd.read_csv(ds, dtype=str)
    frame.assign(event=["1", ""] * 8, time_days=["12", ""] * 8).to_csv(ds, index=False)
    paths = make_splits(ds, folder_outputs(tmp_path / "splits", "t", [2], 2), "t", seed=1)
    split = read_split_csv(split_path(tmp_path / "splits", "t", 2, 0))
    assert len(paths) == 3 and len(split.train) == 4  # two folds and the meta; 2 shots x 2 classes


def test_half_a_survival_label_in_a_hand_edited_sheet_is_refused_by_slide(tmp_path):
    sheet = pd.DataFrame({"slide_id": ["s1"], "case_id": ["P1"], "label": ["A"], "event": ["1"], "time_days": [""]})
    (tmp_path / "s1.h5").write_bytes(b"")
    with pytest.raises(CohortError, match="slide 's1' has event '1' and time_days '': give both"):
        build_dataset(sheet, {"s1": 20.0}, {"f": [tmp_path / "s1.h5"]})
    with pytest.raises(CohortError, match="slide 's1': event 'x' / time_days '3'"):
        build_dataset(sheet.assign(event="x", time_days="3"), {"s1": 20.0}, {"f": [tmp_path / "s1.h5"]})


def test_demo_sheet_has_the_normalized_columns_and_takes_survival_labels(tmp_path):
    from pipeline.demo import demo_slides, write_demo_sheet
    from pipeline.gdc.clinical import Survival
    from pipeline.sheet import SHEET_COLUMNS

    slides = demo_slides(["glandular", "solid"], 2)
    labels = {slides[0].slide_id: Survival(1, 120.0), "real": Survival(0, 33.5)}
    write_demo_sheet(tmp_path / "sheet.csv", slides, "s", [{"slide_id": "real", "case_id": "real", "label": "",
                                                            "file": "r.svs"}], survival=labels)  # fmt: skip
    sheet = read_sheet(tmp_path / "sheet.csv")
    assert list(sheet.columns) == list(SHEET_COLUMNS)
    cells = {r.slide_id: (r.event, r.time_days) for r in sheet.itertuples()}
    assert cells[slides[0].slide_id] == ("1", "120") and cells["real"] == ("0", "33.5")
    assert cells[slides[1].slide_id] == ("", "")
    write_demo_sheet(tmp_path / "plain.csv", slides, "s")
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == ",".join(SHEET_COLUMNS)


def test_has_survival_reads_the_raw_task_list():
    from pipeline.wiring.cohort import has_survival

    assert not has_survival({"tasks": [{"name": "t", "labels": ["a", "b"]}, {"name": "h", "type": "hierarchical"}]})
    assert has_survival({"tasks": [{"name": "t"}, {"name": "os", "type": "survival"}]})


def test_sheet_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,case_id,label\n")
    with pytest.raises(CohortError, match=r"missing column\(s\) \['slide_id'\]"):
        read_sheet(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("slide_id,case_id,label\na,P,X\na,P,X\n")
    with pytest.raises(CohortError, match="slide_id listed more than once: \\['a'\\]"):
        read_sheet(dup)
    assert slide_id_of("/x/TCGA-05-4244-01Z-00-DX1.d4ff32cd-38cf-40ea-8213-45c2b100ac01.h5") == (
        "TCGA-05-4244-01Z-00-DX1.d4ff32cd-38cf-40ea-8213-45c2b100ac01")


def test_build_dataset_keeps_sheet_order_and_ids_as_written(tmp_path):
    sheet = pd.DataFrame({"slide_id": ["007", "NA"], "case_id": ["001", "002"], "label": ["b", "a"]})
    files = {"f": [tmp_path / "007.h5", tmp_path / "NA.h5"]}
    for p in files["f"]:
        p.write_bytes(b"")
    cohort = build_dataset(sheet, {"007": 40.0, "NA": 20.5}, files)
    assert cohort.dataset.values.tolist() == [["001", "007", "b", 40, "", ""], ["002", "NA", "a", 20.5, "", ""]]


# --- splits -----------------------------------------------------------------------------------------------------


def _read_all(out: Path, task: str, shots: int, k: int) -> list[Split]:
    return [read_split_csv(split_path(out, task, shots, i)) for i in range(k)]


def test_no_case_in_two_partitions_in_any_fold(tmp_path):
    ds = multi_slide_cohort(tmp_path)
    make_splits(ds, folder_outputs(tmp_path / "splits", "t", [4, 8], 5), "t", seed=3)
    data = pd.read_csv(ds, dtype=str)
    case_of = dict(zip(data["slide_id"], data["case_id"]))
    assert data.groupby("case_id").size().max() >= 2  # the property is tested on patients with several slides
    for shots in (4, 8):
        for split in _read_all(tmp_path / "splits", "t", shots, 5):
            cases = {name: {case_of[s] for s in ids} for name, ids in split.partitions().items()}
            assert not cases["train"] & cases["val"]
            assert not cases["train"] & cases["test"]
            assert not cases["val"] & cases["test"]
    for fold in range(5):  # the whole training partition too, not only the few-shot set drawn from it
        full = draw_partitions(data, ["A", "B", "C"], 0.2, 0.2, 3, fold)
        parts = [{case_of[s] for s in ids} for ids in full.partitions().values()]
        assert sum(len(p) for p in parts) == data["case_id"].nunique() == len(set().union(*parts))


def test_class_proportions_within_one_slide_of_target(tmp_path):
    ds = multi_slide_cohort(tmp_path)
    data = pd.read_csv(ds, dtype=str)
    n = data["label"].value_counts().to_dict()
    make_splits(ds, folder_outputs(tmp_path / "splits", "t", [4], 5), "t", val_frac=0.25, test_frac=0.15, seed=11)
    label_of = dict(zip(data["slide_id"], data["label"]))
    for split in _read_all(tmp_path / "splits", "t", 4, 5):
        for name, frac in (("val", 0.25), ("test", 0.15)):
            got = Counter(label_of[s] for s in split.partitions()[name])
            for label in n:
                assert abs(got[label] - target(frac, n[label])) <= 1, (name, label, got[label])


def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    ds = multi_slide_cohort(tmp_path)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_splits(ds, folder_outputs(tmp_path / name, "t", [4, 8], 3), "t", seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 2 * (3 + 1)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    csvs = [f for f in files if f.suffix == ".csv"]
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in csvs)
    # row order of dataset.csv does not matter, only its content and the seed
    shuffled = tmp_path / "shuffled" / "dataset.csv"
    shuffled.parent.mkdir()
    pd.read_csv(ds, dtype=str).sample(frac=1, random_state=1).to_csv(shuffled, index=False)
    make_splits(shuffled, folder_outputs(tmp_path / "d", "t", [4, 8], 3), "t", seed=5)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "d" / f).read_bytes() for f in csvs)


def test_shots_per_class_exact_nested_and_val_test_shared_across_shots(tmp_path):
    ds = multi_slide_cohort(tmp_path)
    data = pd.read_csv(ds, dtype=str)
    label_of = dict(zip(data["slide_id"], data["label"]))
    make_splits(ds, folder_outputs(tmp_path / "s", "t", [2, 4, 8], 4), "t", seed=2)
    by_shots = {s: _read_all(tmp_path / "s", "t", s, 4) for s in (2, 4, 8)}
    for shots, folds in by_shots.items():
        for split in folds:
            assert Counter(label_of[s] for s in split.train) == {"A": shots, "B": shots, "C": shots}
    for fold in range(4):
        assert set(by_shots[2][fold].train) < set(by_shots[4][fold].train) < set(by_shots[8][fold].train)
        assert by_shots[2][fold].val == by_shots[8][fold].val and by_shots[2][fold].test == by_shots[8][fold].test
    meta = json.loads((tmp_path / "s" / "t_4" / "splits_meta.json").read_text())
    assert meta["seed"] == 2 and meta["shots"] == 4 and meta["folds"] == 4 and meta["labels"] == ["A", "B", "C"]
    assert meta["per_fold"][0]["train"] == {"A": 4, "B": 4, "C": 4}


def test_demo_cohort_works_with_the_default_config_values(tmp_path):
    """Both demo tasks split the default demo cohort: 5 slides per fine label, the first two of one patient."""
    from pipeline.labels import parse_tree_args
    from pipeline.wiring.cohort import task_type, tasks

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    per_class = config["demo"]["slides_per_class"]
    ds = write_case_sheet(tmp_path / "dataset.csv", {lab: [2] + [1] * (per_class - 2) for lab in config["demo"]["classes"]})
    label_of = dict(zip(*pd.read_csv(ds, dtype=str)[["slide_id", "label"]].values.T))
    c = config["cohort"]
    expected = {"demo": (4, 2, 2), "demo_tree": (2, 1, 1)}  # (train, val, test) slides per class of the task
    for name, task in tasks(config).items():
        if task["type"] == "survival":
            continue  # cross-validated over patients: test_demo_survival_splits_with_the_default_config_values
        tree = parse_tree_args(task_type(task).split_tree_args(task))
        make_splits(ds, folder_outputs(tmp_path / "s", name, task["shots"], c["folds"]), name, c["val_frac"],
                    c["test_frac"], c["seed"], task["labels"], label_tree=tree)
        class_of = (lambda s: tree.coarse_of(label_of[s])) if tree else label_of.get
        for split in _read_all(tmp_path / "s", name, task["shots"][0], c["folds"]):
            for part, want in zip(("train", "val", "test"), expected[name]):
                assert Counter(class_of(s) for s in split.partitions()[part]) == dict.fromkeys(task["labels"], want)


def test_demo_survival_splits_with_the_default_config_values(tmp_path):
    """The demo's survival times (drawn from the slides' morphology) split into the default folds and bins, every
    patient tested once, each test fold with a death."""
    from pipeline.demo import demo_slides, demo_survival
    from pipeline.survival.splits import write_cv_splits

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    d, c = config["demo"], config["cohort"]
    slides = demo_slides(d["classes"], d["slides_per_class"])
    times = demo_survival(slides, d["seed"])
    table = pd.DataFrame([{"case_id": s.case_id, "event": times[s.slide_id].event,
                           "time_days": times[s.slide_id].time_days} for s in slides]).drop_duplicates("case_id")
    assert 0.2 <= 1 - table["event"].mean() <= 0.5  # about a third censored
    from pipeline.training.tasks.survival import SurvivalSettings

    bins = SurvivalSettings(**next(t.get("settings") or {} for t in config["tasks"] if t["type"] == "survival")).bins
    write_cv_splits(table, SplitOutputs.in_folder(tmp_path, c["folds"]), seed=c["seed"], n_bins=bins)
    tested = []
    for k in range(c["folds"]):
        split = read_split_csv(tmp_path / f"splits_{k}.csv")
        tested += split.test
        assert table.set_index("case_id").loc[list(split.test), "event"].sum() >= 1
    assert sorted(tested) == sorted(table["case_id"])


def test_too_few_slides_for_the_shots_names_the_class_and_counts(tmp_path):
    ds = demo_like(tmp_path)
    with pytest.raises(NotEnoughSlidesError) as err:
        make_splits(ds, folder_outputs(tmp_path / "s", "demo", [4, 8], 5), "demo")
    msg = str(err.value)
    assert "class 'glandular' has 8 slide(s): 2 go to test and 2 to val" in msg
    assert "leaving 4 for training, fewer than the 8 shots asked" in msg
    assert not (tmp_path / "s").exists()  # nothing half-written
    small = write_case_sheet(tmp_path / "small" / "dataset.csv", {"A": [1] * 10, "B": [1] * 2})
    with pytest.raises(NotEnoughSlidesError, match=r"class 'B' has 2 slide\(s\): 1 go to test and 1 to val"):
        make_splits(small, folder_outputs(tmp_path / "s2", "t", [1], 5), "t")


def test_a_class_whose_patients_cannot_fill_val_and_test_is_named(tmp_path):
    # class B has enough slides on paper (6) but they come from one patient, who can only be in one partition
    ds = write_case_sheet(tmp_path / "dataset.csv", {"A": [1] * 10, "B": [6]})
    with pytest.raises(MissingClassError, match=r"fold 0 \(t, 1-shot\): class\(es\) \['B'\] have no slide in 'val'"):
        make_splits(ds, folder_outputs(tmp_path / "s", "t", [1], 5), "t")


def test_bad_fractions_and_labels_are_refused(tmp_path):
    ds = demo_like(tmp_path)
    with pytest.raises(SplitError, match="val_frac=0.6 and test_frac=0.5 must each be in"):
        make_splits(ds, folder_outputs(tmp_path / "s", "d", [1], 5), "d", val_frac=0.6, test_frac=0.5)
    with pytest.raises(SplitError, match=r"dataset has label\(s\) \['solid'\] that are not in the configured"):
        make_splits(ds, folder_outputs(tmp_path / "s", "d", [1], 5), "d", labels=["glandular", "other"])
    with pytest.raises(NotEnoughSlidesError, match="class 'other' has 0 slide"):
        make_splits(ds, folder_outputs(tmp_path / "s", "d", [1], 5), "d", labels=["glandular", "solid", "other"])


# --- HiVE-MIL format, import ------------------------------------------------------------------------------------


def test_split_file_is_hivemil_format_and_round_trips(tmp_path):
    split = Split(("a", "b"), ("c", "d", "e", "NA"), ("f",))
    path = tmp_path / "splits_0.csv"
    write_split_csv(path, split)
    assert path.read_text().splitlines() == [",train,val,test", "0,a,c,f", "1,b,d,", "2,,e,", "3,,NA,"]
    assert read_split_csv(path) == split
    # as HiVE-MIL ships them (unnamed index column), and without the index column
    (tmp_path / "h.csv").write_text(",train,val,test\n0,t1,v1,x1\n1,t2,,x2\n")
    assert read_split_csv(tmp_path / "h.csv") == Split(("t1", "t2"), ("v1",), ("x1", "x2"))
    (tmp_path / "n.csv").write_text("train,val,test\nt1,v1,x1\n")
    assert read_split_csv(tmp_path / "n.csv") == Split(("t1",), ("v1",), ("x1",))
    (tmp_path / "bad.csv").write_text(",train,validation,test\n")
    with pytest.raises(SplitError, match=r"missing column\(s\) \['val'\]"):
        read_split_csv(tmp_path / "bad.csv")


def test_generated_splits_import_back_unchanged_from_hivemil_layout(tmp_path):
    ds = multi_slide_cohort(tmp_path)
    make_splits(ds, folder_outputs(tmp_path / "gen", "t", [4], 3), "t", seed=9)
    hive = tmp_path / "hive" / "t"  # HiVE-MIL's repository layout: splits/{task}/{task}_{shots}/splits_{k}.csv
    shutil.copytree(tmp_path / "gen" / "t_4", hive / "t_4")
    written = import_splits(tmp_path / "hive", ds, folder_outputs(tmp_path / "imp", "t", [4], 3), "t")
    assert len(written) == 4
    for i in range(3):
        assert split_path(tmp_path / "imp", "t", 4, i).read_bytes() == split_path(tmp_path / "gen", "t", 4, i).read_bytes()
    meta = json.loads((tmp_path / "imp" / "t_4" / "splits_meta.json").read_text())
    assert meta["source"] == "imported" and len(meta["imported_from"]) == 3
    with pytest.raises(SplitError, match="no split file to import for t 8-shot fold 0"):
        import_splits(tmp_path / "hive", ds, folder_outputs(tmp_path / "imp", "t", [8], 3), "t")


def _import_one(tmp_path: Path, ds: Path, split: Split, shots: int, **kw) -> list[Path]:
    src = tmp_path / "src"
    write_split_csv(split_path(src, "t", shots, 0), split)
    return import_splits(src, ds, folder_outputs(tmp_path / "out", "t", [shots], 1), "t", **kw)


def test_import_errors_each_carry_their_message(tmp_path):
    ds = write_case_sheet(tmp_path / "dataset.csv", {"A": [1, 1, 1, 2], "B": [1, 1, 1, 1]})
    # A-case003 has two slides: s0 and s1
    ok = Split(("A-case000-s0", "B-case000-s0"), ("A-case001-s0", "B-case001-s0"), ("A-case002-s0", "B-case002-s0"))
    assert len(_import_one(tmp_path, ds, ok, 1)) == 2
    with pytest.raises(UnknownSlideError, match=r"1 slide\(s\) in 'test' are not in the dataset .*'ghost'"):
        _import_one(tmp_path, ds, Split(ok.train, ok.val, ok.test + ("ghost",)), 1)
    with pytest.raises(MissingClassError, match=r"class\(es\) \['B'\] have no slide in 'val'"):
        _import_one(tmp_path, ds, Split(ok.train, ("A-case001-s0",), ok.test), 1)
    with pytest.raises(MissingClassError, match=r"class\(es\) \['A'\] have no slide in 'test'"):
        _import_one(tmp_path, ds, Split(ok.train, ok.val, ("B-case002-s0",)), 1)
    with pytest.raises(NotEnoughSlidesError, match="expected 2 for every class"):
        _import_one(tmp_path, ds, ok, 2)
    with pytest.raises(CaseLeakError, match=r"slide\(s\) in both 'train' and 'test'"):
        _import_one(tmp_path, ds, Split(ok.train, ok.val, ok.test + ("A-case000-s0",)), 1)
    leak = Split(("A-case003-s0", "B-case000-s0"), ok.val, ok.test + ("A-case003-s1",))
    with pytest.raises(CaseLeakError, match=r"case\(s\) have slides in both 'train' and 'test' \(patient leak\)"):
        _import_one(tmp_path, ds, leak, 1)
    assert len(_import_one(tmp_path, ds, leak, 1, allow_case_overlap=True)) == 2


def test_splits_command_draws_and_imports(tmp_path, capsys):
    ds = demo_like(tmp_path)
    assert main(["splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "s"), "--task", "demo",
                 "--shots", "2", "4", "--folds", "2", "--labels", "glandular", "solid", "--import-from", ""]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "demo_4").iterdir()) == [
        "splits_0.csv", "splits_1.csv", "splits_meta.json"]
    assert main(["splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "i"), "--task", "demo", "--shots", "4",
                 "--folds", "2", "--import-from", str(tmp_path / "s")]) == 0
    assert (tmp_path / "i" / "demo_4" / "splits_1.csv").read_bytes() == (tmp_path / "s" / "demo_4" / "splits_1.csv").read_bytes()
    assert main(["splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "x"), "--task", "demo",
                 "--shots", "16"]) == 1
    assert "fewer than the 16 shots asked" in capsys.readouterr().err


def test_splits_command_writes_exactly_the_files_it_is_given(tmp_path, capsys):
    """The workflow's way: one shot count, fold k to the k-th --out, the meta to --meta; any names and folders."""
    ds = demo_like(tmp_path)
    out = tmp_path / "anywhere"
    files = [out / "a" / "first.csv", out / "b" / "second.csv"]
    args = ["splits", "--dataset", str(ds), "--task", "demo", "--shots", "2", "--folds", "2", "--seed", "4"]
    assert main([*args, "--out", *map(str, files), "--meta", str(out / "how.json")]) == 0
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted([*files, out / "how.json"])
    meta = json.loads((out / "how.json").read_text())
    assert meta["shots"] == 2 and meta["folds"] == 2 and meta["seed"] == 4
    # the same folds as --out-dir draws, with HiVE-MIL's names
    assert main([*args, "--out-dir", str(tmp_path / "dir")]) == 0
    for k, path in enumerate(files):
        assert path.read_bytes() == (tmp_path / "dir" / "demo_2" / f"splits_{k}.csv").read_bytes()
    # importing writes to the given files too
    imported = [tmp_path / "imp" / "x.csv", tmp_path / "imp" / "y.csv"]
    assert main([*args, "--out", *map(str, imported), "--meta", str(tmp_path / "imp" / "m.json"),
                 "--import-from", str(tmp_path / "dir")]) == 0
    assert [p.read_bytes() for p in imported] == [p.read_bytes() for p in files]
    # one file per fold, the meta beside them, one shot count
    assert main([*args, "--out", str(files[0]), "--meta", str(out / "how.json")]) == 1
    assert "--folds 2 but 1 --out file(s)" in capsys.readouterr().err
    assert main([*args, "--out", *map(str, files)]) == 1
    assert "--out needs --meta" in capsys.readouterr().err
    assert main([*args[:6], "2", "4", *args[7:], "--out", *map(str, files), "--meta", str(out / "m.json")]) == 1
    assert "--out names the files of one shot count" in capsys.readouterr().err


# --- prompts ----------------------------------------------------------------------------------------------------


def test_every_task_has_a_shipped_prompt_file():
    """HiVE-MIL-format prompts for the classification tasks; the survival tasks' attribute prompts are
    tests/test_attribute_prompts.py's."""
    assert sorted(n for n in shipped_prompt_files() if not n.endswith("_survival")) == sorted(TASK_LABELS)


@pytest.mark.parametrize("task", sorted(TASK_LABELS))
def test_shipped_prompt_file_passes_the_validator(task):
    prompts = load_prompts(resolve_prompt_file(task), TASK_LABELS[task])
    assert prompts.labels == TASK_LABELS[task]
    for cls in prompts.classes:
        texts = cls.texts()
        assert len(cls.coarse) == 4 and len(cls.fine) == 12 and len(set(texts)) == 16
        assert cls.parent_of_fine() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        # CLIP-style towers read 77 tokens, 18 of them context and start/end: keep each text short
        assert max(len(t.split()) for t in texts) <= 30
    raw = json.loads(resolve_prompt_file(task).read_text())
    assert list(raw) == TASK_LABELS[task] and all(len(v) == 16 for v in raw.values())


def _valid_obj() -> dict:
    return {lab: {f"{lab} term {i}": f"explanation {i} of {lab}." for i in range(16)} for lab in ("A", "B")}


def _dumps_with_duplicate_term() -> str:
    text = json.dumps(_valid_obj(), indent=1)
    return text.replace('"A term 5"', '"A term 4"')


@pytest.mark.parametrize(
    ("text", "labels", "message"),
    [
        ('{"A": {"x": "y",}}', None, r"not valid JSON \(line 1, column 17"),
        ("[1, 2]", None, "expected a non-empty object"),
        ("{}", None, "expected a non-empty object"),
        (json.dumps({"A": {k: v for k, v in list(_valid_obj()["A"].items())[:15]}}), None,
         r"class 'A': 15 entries, expected 16 \(4 coarse 5x descriptions, then 12 fine 20x ones, 3 per coarse\)"),
        (_dumps_with_duplicate_term(), None, r"class 'A' entry 5 \('A term 4'\): term repeated within the class"),
        (json.dumps(_valid_obj()), ["B", "A"], r"classes are in the order \['A', 'B'\], but the label order is \['B', 'A'\]"),
        (json.dumps(_valid_obj()), ["A", "B", "C"], r"class\(es\) \['C'\] of the labels have no prompts"),
        (json.dumps(_valid_obj()), ["A"], r"class\(es\) \['B'\] are not among the labels \['A'\]"),
        (json.dumps({**_valid_obj(), "A": {**_valid_obj()["A"], "A term 3": "  "}}), None,
         r"class 'A' entry 3 \('A term 3'\): empty explanation"),
        (json.dumps({**_valid_obj(), "B": {**_valid_obj()["B"], "B term 0": ["list"]}}), None,
         r"class 'B' entry 0 \('B term 0'\): explanation must be a string, got list"),
        (json.dumps({"A": "not an object"}), None, "class 'A': expected an object of term: explanation entries"),
        ('{"A": %s, "A": %s}' % (json.dumps(_valid_obj()["A"]), json.dumps(_valid_obj()["A"])), None,
         r"class\(es\) listed more than once: \['A'\]"),
    ],
)
def test_broken_prompt_files_are_rejected_with_a_message(tmp_path, text, labels, message):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(PromptError, match=message) as err:
        load_prompts(path, labels)
    assert str(path) in str(err.value)


def test_prompt_errors_are_all_listed_at_once():
    obj = _valid_obj()
    obj["A"].pop("A term 0")
    obj["B"]["B term 1"] = ""
    with pytest.raises(PromptError, match=r"2 problem\(s\)") as err:
        parse_prompts(json.dumps(obj), "x.json", ["A", "B"])
    assert "class 'A': 15 entries" in str(err.value) and "class 'B' entry 1" in str(err.value)


def test_check_prompts_writes_a_checked_copy_and_the_override_is_used(tmp_path, capsys):
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps(_valid_obj()))
    assert resolve_prompt_file("demo", custom) == custom
    out = tmp_path / "out" / "prompts.json"
    prompts = check_prompts(custom, ["A", "B"], out)
    assert json.loads(out.read_text()) == _valid_obj() and prompts.labels == ["A", "B"]
    assert list(json.loads(out.read_text())["A"]) == list(_valid_obj()["A"])  # order kept
    with pytest.raises(PromptError, match="no shipped prompt file for task 'tcga_luad'"):
        resolve_prompt_file("tcga_luad")
    with pytest.raises(PromptError, match="no such file"):
        resolve_prompt_file("demo", tmp_path / "missing.json")
    assert main(["check-prompts", "--task", "tcga_rcc", "--labels", "CCRCC", "PRCC", "CHRCC"]) == 1
    assert "label order is ['CCRCC', 'PRCC', 'CHRCC']" in capsys.readouterr().err
    assert main(["check-prompts", "--prompts", str(custom), "--labels", "A", "B", "--out", str(out)]) == 0


# --- config and rules -------------------------------------------------------------------------------------------


def test_config_cohort_section_matches_its_schema():
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]["cohort"]
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())["cohort"]
    jsonschema.Draft202012Validator(schema).validate(cfg)
    assert set(cfg) == set(schema["properties"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({**cfg, "val_frac": 0})
    from pipeline.attribute_prompts import load_attribute_prompts
    from pipeline.wiring.cohort import tasks

    for task in tasks(yaml.safe_load((REPO / "config.yaml").read_text())).values():
        path = resolve_prompt_file(task["name"], task["prompts"])
        load_attribute_prompts(path) if task["type"] == "survival" else load_prompts(path, task["labels"])


@pytest.mark.workflow
def test_cohort_rules_run_in_snakemake(tmp_path):
    """The rules of workflow/rules/cohort.smk, fed by stand-in input functions, produce the contracted files."""
    sheet = tmp_path / "sheet.csv"
    rows = ["slide_id,case_id,label"] + [f"{lab}{i},{lab}-P{i},{lab}" for lab in ("glandular", "solid")
                                         for i in range(8)] + ["real,R,"]
    sheet.write_text("\n".join(rows) + "\n")
    slides = [r.split(",")[0] for r in rows[1:]]
    for s in slides:
        _patches(tmp_path / "in" / "patches" / f"{s}.h5", 40)
        f5, fh = _features(tmp_path / "in", s)
    (tmp_path / "Snakefile").write_text(
        "import glob\n"
        "from pathlib import Path\n"
        "from pipeline.wiring import cohort as ws\n"
        "from pipeline.wiring import layout\n"
        "from pipeline.wiring import flags\n"
        "shell.prefix(f'HIVE_PYTHON={flags.python_command(workflow.deployment_settings.deployment_method)}; ')\n"
        "config.update({'output_dir': 'res', 'cohort': %r, 'tasks': %r})\n"
        "OUT = config['output_dir']\n"
        "TASKS = ws.tasks(config)\n"
        "def out(pattern, **values):\n"
        "    return f'{OUT}/{pattern}' if not values else expand(f'{OUT}/{pattern}', **values, allow_missing=True)\n"
        "def dataset_inputs(wildcards):\n"
        "    return {'sheet': 'sheet.csv', 'patches': sorted(glob.glob('in/patches/*.h5')),\n"
        "            'features_5x': sorted(glob.glob('in/f5/*.h5')), 'hierarchical': sorted(glob.glob('in/fh/*.h5'))}\n"
        "def prompt_file(wildcards):\n"
        "    return %r\n"
        "include: %r\n"
        % (yaml.safe_load((REPO / "config.yaml").read_text())["cohort"],
           [{"name": "demo", "labels": ["glandular", "solid"]}], str(resolve_prompt_file("demo")),
           str(REPO / "workflow" / "rules" / "cohort.smk"))
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "splits_all"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "res/cohort/dropped.csv").read_text().splitlines()[1].startswith("real,R,,no label")
    assert len(pd.read_csv(tmp_path / "res/cohort/dataset.csv")) == 16
    assert sorted(p.name for p in (tmp_path / "res/splits/demo_4").iterdir()) == [
        f"splits_{k}.csv" for k in range(5)] + ["splits_meta.json"]
    assert json.loads((tmp_path / "res/cohort/prompts/demo.json").read_text()).keys() == {"glandular", "solid"}
