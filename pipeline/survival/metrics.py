"""Survival metrics on predicted risks and survival functions, computed with scikit-survival (no torch).

scikit-survival's `concordance_index_censored` is what MCAT, Patch-GCN and PORPOISE report as the C-index, so the
numbers compare with theirs. Integrated Brier score, Kaplan-Meier estimates and the log-rank test come from the same
library rather than re-implementations. Where a metric is undefined for the data (no comparable pairs, an empty risk
group, no evaluation time inside the test follow-up), it is NaN rather than an error, so one small fold does not
stop a cross-validation report; the reason is logged at debug level. scikit-survival is imported inside the
functions, so importing this module stays light.

Conventions: event 1 = death observed, time in days, risk higher = earlier death. A model's survival function `surv`
is [N, K] over the K time bins of `pipeline.survival.bins`: S_k = P(surviving past the end of bin k), i.e. past the
upper edge `edges[k + 1]`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from pipeline.formats import PathLike
from pipeline.survival.bins import check_labels

log = logging.getLogger(__name__)

#: risks closer than this count as tied (scikit-survival's default, named so it is explicit)
TIED_TOL = 1e-8
GROUPS = ("low", "high")


def _surv_array(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    """scikit-survival's structured (event: bool, time: float) label array."""
    from sksurv.util import Surv

    return Surv.from_arrays(event=event.astype(bool), time=time)


def _scores(values: np.ndarray, n: int, name: str) -> np.ndarray:
    """`values` as n finite floats (a NaN from a diverged model is an error to see, not a metric to hide)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    if values.size != n:
        raise ValueError(f"{name}: {values.size} values for {n} patients")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: {int((~np.isfinite(values)).sum())} non-finite value(s)")
    return values


def c_index(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index of `risk` (higher = earlier death); NaN when no pair is comparable (no death
    before another patient's time: all censored, or every death at the latest time)."""
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    time, event = check_labels(time, event)
    risk = _scores(risk, time.size, "risk")
    if not event.any() or time[event == 1].min() >= time.max():
        log.debug("c-index: no comparable pairs among %d patients (%d events)", time.size, int(event.sum()))
        return math.nan
    try:
        value = concordance_index_censored(event.astype(bool), time, risk, tied_tol=TIED_TOL)[0]
    except NoComparablePairException as err:
        log.debug("c-index: %s", err)
        return math.nan
    return float(value)


def brier_times(test_time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Indices k of the bins whose upper edge (`edges[k + 1]`, where S_k is evaluated) lies inside the test
    follow-up [min, max), the range scikit-survival accepts; the last bin's upper edge is past every time."""
    test_time = np.asarray(test_time, dtype=float)
    upper = np.asarray(edges, dtype=float)[1:-1]
    return np.flatnonzero((upper >= test_time.min()) & (upper < test_time.max()))


def integrated_brier(
    train_event: np.ndarray,
    train_time: np.ndarray,
    test_event: np.ndarray,
    test_time: np.ndarray,
    surv: np.ndarray,
    edges: np.ndarray,
) -> float:
    """Integrated Brier score of the test patients' predicted survival `surv` [N_test, K] (lower is better), with
    the censoring distribution estimated on the training labels.

    S_k is compared at the upper edge of bin k for the bins 0..K-2 whose edge lies inside the test follow-up
    (`brier_times`). NaN when fewer than two such times remain or scikit-survival refuses the data (e.g. the
    training censoring survival is zero at a test time).
    """
    from sksurv.metrics import integrated_brier_score

    train_time, train_event = check_labels(train_time, train_event)
    test_time, test_event = check_labels(test_time, test_event)
    edges = np.asarray(edges, dtype=float)
    surv = np.asarray(surv, dtype=float)
    if surv.ndim != 2 or surv.shape != (test_time.size, edges.size - 1):
        raise ValueError(f"surv must be [{test_time.size}, {edges.size - 1}] (test patients x bins), got {surv.shape}")
    _scores(surv, surv.size, "surv")
    if test_time.size == 0 or train_time.size == 0:
        log.debug("integrated Brier score: no %s patients", "test" if test_time.size == 0 else "training")
        return math.nan
    keep = brier_times(test_time, edges)
    if keep.size < 2:
        log.debug("integrated Brier score: %d bin edge(s) inside the test follow-up [%g, %g), need 2",
                  keep.size, test_time.min(), test_time.max())
        return math.nan
    try:
        value = integrated_brier_score(
            _surv_array(train_event, train_time), _surv_array(test_event, test_time), surv[:, keep], edges[keep + 1]
        )
    except ValueError as err:
        log.debug("integrated Brier score not computable: %s", err)
        return math.nan
    return float(value)


def risk_groups(risk: np.ndarray) -> np.ndarray:
    """High-risk mask: risk above the median (patients at the median are low), the usual median split of a
    predicted risk into two Kaplan-Meier groups."""
    risk = np.asarray(risk, dtype=float).reshape(-1)
    if risk.size == 0:
        return np.zeros(0, dtype=bool)
    risk = _scores(risk, risk.size, "risk")
    return risk > np.median(risk)


def logrank_p(event: np.ndarray, time: np.ndarray, high: np.ndarray) -> float:
    """Log-rank test p-value between the high- and low-risk groups; NaN when a group is empty, nobody died, or the
    test statistic is undefined (no patient of one group at risk at any death)."""
    from sksurv.compare import compare_survival

    time, event = check_labels(time, event)
    high = np.asarray(high, dtype=bool).reshape(-1)
    if high.size != time.size:
        raise ValueError(f"high: {high.size} values for {time.size} patients")
    if high.all() or not high.any():
        log.debug("log-rank: a risk group is empty (%d high of %d)", int(high.sum()), high.size)
        return math.nan
    if not event.any():
        log.debug("log-rank: no event among %d patients", time.size)
        return math.nan
    try:
        _, p_value = compare_survival(_surv_array(event, time), high.astype(int))
    except (ValueError, np.linalg.LinAlgError) as err:
        log.debug("log-rank not computable: %s", err)
        return math.nan
    return float(p_value)


def kaplan_meier_curves(
    event: np.ndarray, time: np.ndarray, high: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Kaplan-Meier estimate per risk group: {"low"/"high": (distinct times, survival after each time, patients)};
    an empty group has empty arrays and n = 0."""
    from sksurv.nonparametric import kaplan_meier_estimator

    time, event = check_labels(time, event)
    high = np.asarray(high, dtype=bool).reshape(-1)
    if high.size != time.size:
        raise ValueError(f"high: {high.size} values for {time.size} patients")
    curves: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for name, members in zip(GROUPS, (~high, high)):
        n = int(members.sum())
        if n == 0:
            curves[name] = (np.zeros(0), np.zeros(0), 0)
            continue
        times, surv = kaplan_meier_estimator(event[members].astype(bool), time[members])
        curves[name] = (np.asarray(times, dtype=float), np.asarray(surv, dtype=float), n)
    return curves


def plot_kaplan_meier(event: np.ndarray, time: np.ndarray, risk: np.ndarray, title: str, path: PathLike) -> float:
    """PNG of the Kaplan-Meier curves of the low- and high-risk halves (median split of `risk`), censored patients
    ticked, group sizes in the legend and the log-rank p-value in the title; returns that p-value (NaN if none)."""
    from pipeline.figures import pyplot, save_figure

    time, event = check_labels(time, event)
    high = risk_groups(_scores(risk, time.size, "risk"))
    curves = kaplan_meier_curves(event, time, high)
    p_value = logrank_p(event, time, high)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, members, color in zip(GROUPS, (~high, high), ("tab:blue", "tab:red")):
        times, surv, n = curves[name]
        if n == 0:
            ax.plot([], [], color=color, label=f"{name} risk (n=0)")
            continue
        xs = np.concatenate([[min(0.0, times[0])], times])
        ys = np.concatenate([[1.0], surv])
        ax.step(xs, ys, where="post", color=color, label=f"{name} risk (n={n}, {int(event[members].sum())} events)")
        censored = np.sort(time[members & (event == 0)])
        at = ys[np.searchsorted(xs, censored, side="right") - 1]
        ax.plot(censored, at, linestyle="none", marker="|", markersize=9, color=color)
    p_text = "n/a" if math.isnan(p_value) else f"{p_value:.3g}"
    ax.set_xlabel("time (days)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}\nlog-rank p = {p_text}", fontsize=9)
    save_figure(fig, Path(path))
    return p_value
