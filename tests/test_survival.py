"""Survival building blocks (pipeline/survival): bins, the discrete-hazard loss, metrics, folds and their command.

Fast and synthetic: no slides, no workflow.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.splits import SplitOutputs, read_split_csv
from pipeline.survival.bins import EPS, SurvivalLabelError, assign_bins, time_bin_edges
from pipeline.survival.loss import nll_discrete_hazard, risk_from_survival, survival_function
from pipeline.survival.metrics import (
    c_index,
    integrated_brier,
    kaplan_meier_curves,
    logrank_p,
    plot_kaplan_meier,
    risk_groups,
)
from pipeline.survival.splits import SplitError, cv_folds, survival_strata, write_cv_splits

LN3 = math.log(3.0)


def cohort(n: int, seed: int, event_rate: float = 0.5) -> tuple[list[str], np.ndarray, np.ndarray]:
    """n synthetic patients: exponential times (days), Bernoulli events, ids c000..."""
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(700.0, n), 1) + 1.0
    event = (rng.random(n) < event_rate).astype(int)
    return [f"c{i:03d}" for i in range(n)], time, event


# --- loss ----------------------------------------------------------------------------------------------------


def test_nll_matches_a_hand_computation_for_a_death_and_a_censored_patient():
    # patient A: logits (0, ln 3, -ln 3) -> hazards (1/2, 3/4, 1/4) -> S = (1/2, 1/8, 3/32); died in bin 1:
    #   -log S_0 - log h_1 = -log(1/2) - log(3/4) = -log(3/8)
    # patient B: logits (-ln 3, 0, ln 3) -> hazards (1/4, 1/2, 3/4) -> S = (3/4, 3/8, 3/32); censored in bin 0:
    #   -log S_0 = -log(3/4)
    logits = torch.tensor([[0.0, LN3, -LN3], [-LN3, 0.0, LN3]], dtype=torch.float64)
    bins, events = torch.tensor([1, 0]), torch.tensor([1, 0])
    a, b = -math.log(3 / 8), -math.log(3 / 4)
    assert nll_discrete_hazard(logits, bins, events).item() == pytest.approx((a + b) / 2, rel=1e-12)
    # alpha weighs the uncensored term: (1 - alpha) * (a + b) + alpha * (a + 0), averaged
    alpha = 0.4
    expected = ((1 - alpha) * a + alpha * a + (1 - alpha) * b) / 2
    assert nll_discrete_hazard(logits, bins, events, alpha=alpha).item() == pytest.approx(expected, rel=1e-12)
    surv = survival_function(logits)
    assert surv.numpy() == pytest.approx(np.array([[1 / 2, 1 / 8, 3 / 32], [3 / 4, 3 / 8, 3 / 32]]), rel=1e-12)
    assert risk_from_survival(surv).numpy() == pytest.approx([-(1 / 2 + 1 / 8 + 3 / 32), -(3 / 4 + 3 / 8 + 3 / 32)])


def test_nll_one_patient_ints_first_bin_and_clamping():
    logits = torch.tensor([0.0, LN3, -LN3], dtype=torch.float64)
    # died in bin 0: S_{-1} = 1, so only -log h_0 = log 2
    assert nll_discrete_hazard(logits, 0, 1).item() == pytest.approx(math.log(2))
    # censored in the last bin: -log S_2 = -log(3/32)
    assert nll_discrete_hazard(logits, 2, 0).item() == pytest.approx(-math.log(3 / 32))
    # a saturated hazard is clamped: large but finite, and the gradient exists
    extreme = torch.tensor([[-200.0, 0.0]], requires_grad=True)
    loss = nll_discrete_hazard(extreme, torch.tensor([0]), torch.tensor([1]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(-math.log(1e-7), rel=1e-3)
    loss.backward()
    assert torch.isfinite(extreme.grad).all()
    with pytest.raises(ValueError, match="bin must be in"):
        nll_discrete_hazard(logits, 3, 1)
    with pytest.raises(ValueError, match="batch of 2"):
        nll_discrete_hazard(torch.zeros(2, 3), torch.tensor([0]), torch.tensor([1, 0]))


def test_risk_from_survival_on_numpy():
    assert risk_from_survival(np.array([[0.9, 0.5], [0.2, 0.1]])) == pytest.approx([-1.4, -0.3])


# --- bins ----------------------------------------------------------------------------------------------------


def test_bin_edges_are_uncensored_quartiles_with_outer_edges_from_everyone():
    dead = np.arange(1.0, 9.0)  # 1..8: quartiles 2.75, 4.5, 6.25
    time = np.concatenate([dead, [0.5, 20.0, 3.0]])
    event = np.concatenate([np.ones(8, int), [0, 0, 0]])
    edges = time_bin_edges(time, event, 4)
    assert edges == pytest.approx([0.5 - EPS, 2.75, 4.5, 6.25, 20.0 + EPS])
    bins = assign_bins(time, edges)
    assert bins.dtype.kind == "i" and bins.min() >= 0 and bins.max() < 4
    # half-open bins [edge_k, edge_k+1): the shortest and longest times are in the outer bins
    assert bins.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0, 3, 1]
    assert assign_bins(np.array([4.5]), edges).tolist() == [2]


def test_bins_of_a_random_cohort_cover_everyone_with_about_equal_deaths():
    _, time, event = cohort(400, seed=3)
    edges = time_bin_edges(time, event, 4)
    bins = assign_bins(time, edges)
    assert set(bins.tolist()) <= {0, 1, 2, 3}
    deaths = np.bincount(bins[event == 1], minlength=4)
    assert deaths.max() - deaths.min() <= 2


def test_too_few_deaths_or_equal_quantiles_raise_naming_counts():
    with pytest.raises(SurvivalLabelError, match=r"3 uncensored patient\(s\) \(of 6\).*lower the survival task's bins setting"):
        time_bin_edges(np.arange(1.0, 7.0), np.array([1, 1, 1, 0, 0, 0]), 4)
    with pytest.raises(SurvivalLabelError, match="coinciding quantiles.*lower the survival task's bins setting"):
        time_bin_edges(np.array([5.0, 5, 5, 5, 5, 6, 9]), np.array([1, 1, 1, 1, 1, 1, 0]), 4)
    with pytest.raises(SurvivalLabelError, match="outside the bin edges"):
        assign_bins(np.array([100.0]), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(SurvivalLabelError, match="events must be 0 or 1"):
        time_bin_edges(np.array([1.0, 2.0]), np.array([1, 2]), 1)


# --- C-index -------------------------------------------------------------------------------------------------


def test_c_index_of_true_risk_is_one_and_of_reversed_risk_zero():
    time = np.array([1.0, 2, 3, 4, 5, 6, 7])
    event = np.array([1, 0, 1, 1, 0, 1, 0])
    assert c_index(event, time, -time) == pytest.approx(1.0)
    assert c_index(event, time, time) == pytest.approx(0.0)


def test_c_index_of_shuffled_labels_is_about_one_half():
    values = []
    for seed in range(10):
        _, time, event = cohort(300, seed=seed)
        risk = -time  # perfect for the true labels
        perm = np.random.default_rng(100 + seed).permutation(time.size)
        values.append(c_index(event[perm], time[perm], risk))
    assert abs(np.mean(values) - 0.5) < 0.05


def test_c_index_is_nan_without_comparable_pairs():
    assert math.isnan(c_index(np.array([0, 0, 0]), np.array([1.0, 2, 3]), np.array([1.0, 2, 3])))
    assert math.isnan(c_index(np.array([0, 0, 1]), np.array([1.0, 2, 3]), np.array([1.0, 2, 3])))  # last one died
    assert math.isnan(c_index(np.array([1, 1]), np.array([3.0, 3.0]), np.array([1.0, 2.0])))  # same day
    with pytest.raises(ValueError, match="non-finite"):
        c_index(np.array([1, 0]), np.array([1.0, 2.0]), np.array([np.nan, 1.0]))


# --- integrated Brier score ----------------------------------------------------------------------------------


def _exponential_surv(edges: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Survival past each bin's upper edge under an exponential model, the same for n patients."""
    return np.tile(np.exp(-edges[1:] / scale), (n, 1))


def test_integrated_brier_is_finite_and_equals_sksurvs_direct_call():
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    cases, time, event = cohort(200, seed=5)
    edges = time_bin_edges(time, event, 4)
    train, test = np.arange(200) % 4 != 0, np.arange(200) % 4 == 0
    test_time, test_event = time[test], event[test]
    surv = _exponential_surv(edges, int(test.sum()), 700.0)
    value = integrated_brier(event[train], time[train], test_event, test_time, surv, edges)
    assert math.isfinite(value) and 0 <= value < 0.5
    inner = edges[1:-1]
    keep = np.flatnonzero((inner >= test_time.min()) & (inner < test_time.max()))
    assert keep.size >= 2
    direct = integrated_brier_score(
        Surv.from_arrays(event[train].astype(bool), time[train]), Surv.from_arrays(test_event.astype(bool), test_time),
        surv[:, keep], inner[keep],
    )
    assert value == pytest.approx(direct)
    # a model that knows nothing (S = 1 everywhere) scores worse than the sane one
    worse = integrated_brier(event[train], time[train], test_event, test_time, np.ones_like(surv), edges)
    assert worse > value


def test_integrated_brier_is_nan_when_it_cannot_be_computed():
    _, time, event = cohort(200, seed=6)
    edges = time_bin_edges(time, event, 4)
    # test patients all inside one bin: no bin edge inside their follow-up
    inside = (time > edges[1]) & (time < edges[2])
    surv = _exponential_surv(edges, int(inside.sum()), 700.0)
    assert math.isnan(integrated_brier(event, time, event[inside], time[inside], surv, edges))
    with pytest.raises(ValueError, match="test patients x bins"):
        integrated_brier(event, time, event, time, np.ones((3, 4)), edges)


# --- risk groups, log-rank, Kaplan-Meier ---------------------------------------------------------------------


def test_logrank_small_for_separated_groups_and_large_for_identical_ones():
    rng = np.random.default_rng(0)
    short, long = rng.uniform(10, 100, 30), rng.uniform(500, 1000, 30)
    time = np.concatenate([long, short])
    event = np.ones(60, int)
    high = np.arange(60) >= 30
    assert logrank_p(event, time, high) < 1e-6
    same = np.concatenate([short, short])
    assert logrank_p(event, same, high) > 0.9
    assert math.isnan(logrank_p(event, time, np.zeros(60, bool)))  # one group empty
    assert math.isnan(logrank_p(np.zeros(60, int), time, high))  # nobody died


def test_risk_groups_split_at_the_median_and_curves_per_group():
    risk = np.array([0.1, 0.5, 0.2, 0.9, 0.7, 0.3])
    high = risk_groups(risk)
    assert high.tolist() == [False, True, False, True, True, False]
    curves = kaplan_meier_curves(np.array([1, 1, 0, 1, 0, 1]), np.array([5.0, 2, 6, 1, 3, 4]), high)
    times, surv, n = curves["high"]
    assert n == 3 and times.tolist() == [1.0, 2.0, 3.0] and surv == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert curves["low"][2] == 3
    assert kaplan_meier_curves(np.array([1, 0]), np.array([1.0, 2.0]), np.array([False, False]))["high"][2] == 0


def test_kaplan_meier_plot_is_written_and_returns_the_logrank_p(tmp_path):
    _, time, event = cohort(80, seed=2)
    risk = -time + np.random.default_rng(0).normal(0, 200, time.size)
    path = tmp_path / "km" / "fold0.png"
    p = plot_kaplan_meier(event, time, risk, "toy fold 0", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert p == pytest.approx(logrank_p(event, time, risk_groups(risk)))
    assert not list(path.parent.glob(".*.tmp"))
    # one group empty (all risks equal): still a plot, p is NaN
    assert math.isnan(plot_kaplan_meier(event, time, np.zeros(time.size), "flat", tmp_path / "flat.png"))
    assert (tmp_path / "flat.png").exists()


# --- folds ---------------------------------------------------------------------------------------------------


def _events_per_test_fold(folds, cases, event) -> list[int]:
    of = dict(zip(cases, event.tolist()))
    return [sum(of[c] for c in test) for _, test in folds]


def test_folds_are_patient_level_and_test_everyone_once():
    cases, time, event = cohort(103, seed=1, event_rate=0.3)
    folds = cv_folds(cases, time, event, folds=5, seed=1)
    assert len(folds) == 5
    tested = [c for _, test in folds for c in test]
    assert sorted(tested) == sorted(cases) and len(set(tested)) == len(cases)
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(set(train) | set(test)) == sorted(cases)
        assert train == sorted(train) and test == sorted(test)
        assert len(test) in (20, 21)


def test_folds_keep_event_rates_close():
    for seed in range(5):
        cases, time, event = cohort(150, seed=seed, event_rate=0.35)
        counts = _events_per_test_fold(cv_folds(cases, time, event, folds=5, seed=seed), cases, event)
        assert max(counts) - min(counts) <= 1, counts


def test_folds_are_seeded_and_ignore_input_order():
    cases, time, event = cohort(60, seed=4)
    a = cv_folds(cases, time, event, seed=1)
    assert cv_folds(cases, time, event, seed=1) == a
    assert cv_folds(cases, time, event, seed=2) != a
    perm = np.random.default_rng(0).permutation(len(cases))
    assert cv_folds([cases[i] for i in perm], time[perm], event[perm], seed=1) == a


@pytest.mark.parametrize("n,events", [(5, 4), (7, 6), (8, 2), (9, 4), (10, 5), (12, 11), (13, 1)])
def test_small_cohorts_with_rare_strata_fold_without_warnings(n, events):
    cases = [f"p{i}" for i in range(n)]
    time = np.linspace(10.0, 1000.0, n)
    event = np.zeros(n, int)
    event[np.linspace(0, n - 1, events).round().astype(int)] = 1
    bins_ok = events >= 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if not bins_ok:
            with pytest.raises(SurvivalLabelError, match="lower the survival task's bins setting"):
                cv_folds(cases, time, event, n_bins=4, folds=5)
            folds = cv_folds(cases, time, event, n_bins=1, folds=5)
        else:
            folds = cv_folds(cases, time, event, n_bins=4, folds=5)
    assert sorted(c for _, test in folds for c in test) == sorted(cases)
    counts = _events_per_test_fold(folds, cases, event)
    if events >= 5:
        assert min(counts) >= 1, counts


def test_strata_merge_rare_bins_within_an_event_status():
    # censored: 1, 2 and 6 patients in bins 0-2 -> bin 0 joins bin 1 (3, still rare), then bin 2;
    # deaths: 2 per bin -> bins 0+1, then 2+3 (the smaller neighbour), then all four; statuses are never mixed
    bins = np.array([0] + [1] * 2 + [2] * 6 + [0, 0, 1, 1, 2, 2, 3, 3])
    event = np.array([0] * 9 + [1] * 8)
    strata, names = survival_strata(bins, event, folds=5)
    assert names == [["bin0/event0", "bin1/event0", "bin2/event0"],
                     ["bin0/event1", "bin1/event1", "bin2/event1", "bin3/event1"]]
    assert strata.tolist() == [0] * 9 + [1] * 8
    # enough of each: bins stay apart
    strata, names = survival_strata(np.repeat([0, 1, 0, 1], 5), np.repeat([0, 0, 1, 1], 5), folds=5)
    assert names == [["bin0/event0"], ["bin1/event0"], ["bin0/event1"], ["bin1/event1"]]
    # a status smaller than folds stays one stratum of its own
    strata, names = survival_strata(np.array([0, 1, 0, 1, 2, 3, 2, 3]), np.array([0, 0, 1, 1, 1, 1, 1, 1]), 5)
    assert names == [["bin0/event0", "bin1/event0"], ["bin0/event1", "bin1/event1", "bin2/event1", "bin3/event1"]]
    # both statuses smaller than folds: one stratum
    strata, names = survival_strata(np.array([0, 0, 1, 1, 1, 0]), np.array([0, 1, 0, 1, 1, 0]), 5)
    assert set(strata.tolist()) == {0} and len(names) == 1


def test_every_test_fold_has_a_death_when_there_are_enough():
    for seed in range(20):
        n = 8 + seed
        cases, time, event = cohort(n, seed=seed, event_rate=0.6)
        if event.sum() < 5:
            continue
        counts = _events_per_test_fold(cv_folds(cases, time, event, folds=5, seed=seed), cases, event)
        assert min(counts) >= 1, (seed, counts)


def test_fewer_cases_than_folds_and_duplicates_raise():
    with pytest.raises(SplitError, match="4 case\\(s\\) cannot make 5 folds"):
        cv_folds(["a", "b", "c", "d"], np.array([1.0, 2, 3, 4]), np.array([1, 1, 1, 1]), n_bins=1, folds=5)
    with pytest.raises(SplitError, match="more than once"):
        cv_folds(["a", "a", "b", "c", "d"], np.arange(1.0, 6.0), np.ones(5, int), n_bins=1, folds=2)


# --- files and the command -----------------------------------------------------------------------------------


def test_write_cv_splits_files_and_meta(tmp_path):
    cases, time, event = cohort(40, seed=8)
    dataset = tmp_path / "dataset.csv"
    dataset.write_text("case_id,slide_id,label\n")
    survival = pd.DataFrame({"case_id": cases, "event": event, "time_days": time})
    # the caller names every file (here not the workflow's layout): fold k goes to the k-th path
    files = SplitOutputs.of([tmp_path / f"fold{k}" / "cv.csv" for k in range(4)], tmp_path / "meta" / "how.json")
    written = write_cv_splits(survival, files, seed=3, n_bins=2, dataset_csv=dataset)
    assert written == [*files.splits, files.meta]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.relative_to(tmp_path) for p in [dataset, *written])
    folds = cv_folds(cases, time, event, n_bins=2, folds=4, seed=3)
    for k, (train, test) in enumerate(folds):
        split = read_split_csv(files.splits[k])
        assert list(split.train) == train and list(split.test) == test and split.val == ()
    meta = json.loads(files.meta.read_text())
    assert meta["unit"] == "case" and meta["folds"] == 4 and meta["seed"] == 3 and meta["n_bins"] == 2
    assert meta["bin_edges"] == pytest.approx(time_bin_edges(time, event, 2).tolist())
    assert meta["cases"] == 40 and meta["events"] == int(event.sum())
    assert meta["test_folds_without_event"] == [] and meta["event_in_every_test_fold_guaranteed"] is True
    assert len(meta["dataset_sha256"]) == 64
    assert sum(f["test"]["events"] for f in meta["per_fold"]) == int(event.sum())
    assert all(f["val"] == {"cases": 0, "events": 0} for f in meta["per_fold"])
    assert all(f["train"]["cases"] + f["test"]["cases"] == 40 for f in meta["per_fold"])


def _survival_dataset(path, n: int = 24) -> tuple[list[str], np.ndarray, np.ndarray]:
    cases, time, event = cohort(n, seed=9)
    rows = []
    for i, (case, t, e) in enumerate(zip(cases, time, event)):
        label = "LUAD" if i % 2 else "LUSC"
        rows.append([case, f"{case}-DX1", label, 20, e, t])
        if i % 3 == 0:  # a second slide of the same patient
            rows.append([case, f"{case}-DX2", label, 20, e, t])
    rows.append(["nolabel", "nolabel-DX1", "LUAD", 20, "", ""])  # survival unknown: left out
    pd.DataFrame(rows, columns=["case_id", "slide_id", "label", "level0_mag", "event", "time_days"]).to_csv(
        path, index=False
    )
    return cases, time, event


def test_survival_splits_command_writes_the_files(tmp_path):
    ds = tmp_path / "dataset.csv"
    cases, time, event = _survival_dataset(ds)
    # the workflow's way: every file named (here in a layout of our own), fold k = the k-th --out
    out = tmp_path / "mine"
    files = [out / "first.csv", out / "second" / "fold.csv", out / "third.csv"]
    assert main(["survival-splits", "--dataset", str(ds), "--out", *map(str, files), "--meta", str(out / "m.json"),
                 "--folds", "3", "--seed", "2", "--bins", "2"]) == 0
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted([*files, out / "m.json"])
    meta = json.loads((out / "m.json").read_text())
    assert meta["unit"] == "case" and meta["cases"] == len(cases) and meta["folds"] == 3
    tested = sorted(c for f in files for c in read_split_csv(f).test)
    assert tested == sorted(cases)
    assert cv_folds(cases, time, event, n_bins=2, folds=3, seed=2)[0][1] == list(read_split_csv(files[0]).test)
    # by hand, --out-dir writes the same folds under HiVE-MIL's names
    assert main(["survival-splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "dir"), "--folds", "3",
                 "--seed", "2", "--bins", "2"]) == 0
    assert (tmp_path / "dir" / "splits_1.csv").read_bytes() == files[1].read_bytes()
    assert (tmp_path / "dir" / "splits_meta.json").is_file()
    # --labels keeps only those slides' cases
    assert main(["survival-splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "luad"), "--folds", "2",
                 "--bins", "2", "--labels", "LUAD"]) == 0
    luad = sorted(c for k in range(2) for c in read_split_csv(tmp_path / "luad" / f"splits_{k}.csv").test)
    assert luad == [c for i, c in enumerate(cases) if i % 2]
    # an empty label list from a rule (`--labels ''`) means every label
    assert main(["survival-splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "all"), "--folds", "3",
                 "--seed", "2", "--bins", "2", "--labels", ""]) == 0
    assert (tmp_path / "all" / "splits_0.csv").read_text() == files[0].read_text()


def test_survival_splits_command_wants_one_out_file_per_fold_and_the_meta(tmp_path, capsys):
    ds = tmp_path / "dataset.csv"
    _survival_dataset(ds)
    two = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert main(["survival-splits", "--dataset", str(ds), "--out", *two, "--meta", str(tmp_path / "m.json"),
                 "--folds", "3"]) == 1
    assert "--folds 3 but 2 --out file(s)" in capsys.readouterr().err
    assert main(["survival-splits", "--dataset", str(ds), "--out", *two, "--folds", "2"]) == 1
    assert "--out needs --meta" in capsys.readouterr().err
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "m.json").exists()


def test_survival_splits_leave_out_cases_without_a_usable_label(tmp_path, capsys):
    """The command reads pipeline.dataset.survival_table: a case whose slides disagree is left out (dropped.csv
    says why), and a dataset without survival columns is refused."""
    ds = tmp_path / "dataset.csv"
    cases, time, event = _survival_dataset(ds, n=6)
    frame = pd.read_csv(ds, dtype=str, keep_default_na=False)
    frame.loc[1, "time_days"] = "1.5"  # c000's second slide disagrees
    frame.to_csv(ds, index=False)
    assert main(["survival-splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "x"), "--folds", "2"]) == 0
    split_cases = set()
    for k in range(2):
        split = read_split_csv(tmp_path / "x" / f"splits_{k}.csv")
        split_cases |= set(split.test)
    assert split_cases == set(cases) - {"c000"}
    frame.drop(columns=["event"]).to_csv(ds, index=False)
    assert main(["survival-splits", "--dataset", str(ds), "--out-dir", str(tmp_path / "y"), "--folds", "2"]) == 1
    assert "no case with event and time_days" in capsys.readouterr().err
