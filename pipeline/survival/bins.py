"""Discrete survival time bins: edges at the quantiles of the uncensored patients' times, once per cohort.

The discrete-hazard models predict one hazard per bin. The inner edges are the quantiles of the times of the
patients whose death was observed (censored times say only that the death came later), so every bin holds about
as many deaths; the outer edges are stretched to the shortest and longest time of all patients (-/+ `EPS`), so
every patient of the cohort falls in a bin. Bins are half-open, [edge_k, edge_k+1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

#: days the outer edges lie beyond the shortest and longest time, so those patients are inside the bins.
EPS = 1e-6


class SurvivalLabelError(PipelineError):
    """Survival labels (event, time) cannot be used as given."""


def check_labels(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`time` as float and `event` as int arrays of one length: finite, non-negative times and 0/1 events (the
    metrics and bins rely on both; a bad value raises here with its position rather than deep inside a library)."""
    time = np.asarray(time, dtype=float).reshape(-1)
    event_raw = np.asarray(event).reshape(-1)
    if time.shape != event_raw.shape:
        raise SurvivalLabelError(f"{time.size} times but {event_raw.size} events")
    bad_time = np.flatnonzero(~np.isfinite(time) | (time < 0))
    if bad_time.size:
        raise SurvivalLabelError(f"times must be finite and >= 0; position {bad_time[0]} is {time[bad_time[0]]}")
    bad_event = np.flatnonzero(~np.isin(event_raw, (0, 1)))
    if bad_event.size:
        raise SurvivalLabelError(f"events must be 0 or 1; position {bad_event[0]} is {event_raw[bad_event[0]]!r}")
    return time, event_raw.astype(int)


def time_bin_edges(time: np.ndarray, event: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """`n_bins + 1` increasing edges: the `n_bins`-quantiles of the uncensored times, with the first and last edge
    replaced by min(all times) - EPS and max(all times) + EPS.

    Raises SurvivalLabelError when there are fewer uncensored patients than bins or two quantiles coincide (many
    deaths on the same day): the message gives the counts and asks for fewer bins (the task's `settings: {bins}`).
    """
    time, event = check_labels(time, event)
    if n_bins < 1:
        raise SurvivalLabelError(f"n_bins must be at least 1, got {n_bins}")
    dead = time[event == 1]
    advice = "lower the survival task's bins setting"
    if dead.size < n_bins:
        raise SurvivalLabelError(
            f"{dead.size} uncensored patient(s) (of {time.size}) cannot make {n_bins} time bins; {advice}"
        )
    if n_bins == 1:  # one bin: only the outer edges, which do not depend on the quantiles
        return np.array([time.min() - EPS, time.max() + EPS])
    try:
        _, edges = pd.qcut(dead, q=n_bins, retbins=True, labels=False)
    except ValueError as err:  # duplicate quantiles (pandas: "Bin edges must be unique")
        distinct = np.unique(dead).size
        raise SurvivalLabelError(
            f"the {dead.size} uncensored patients' times ({distinct} distinct) give coinciding quantiles for "
            f"{n_bins} time bins; {advice}"
        ) from err
    edges = np.asarray(edges, dtype=float)
    edges[0] = time.min() - EPS
    edges[-1] = time.max() + EPS
    return edges


def assign_bins(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index in [0, len(edges) - 1) of each time, bins [edge_k, edge_k+1); a time outside the edges (a patient
    not of the cohort the edges were made from) raises SurvivalLabelError instead of getting no bin."""
    time = np.asarray(time, dtype=float).reshape(-1)
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise SurvivalLabelError(f"bin edges must be at least two increasing values, got {edges.tolist()}")
    bins = pd.cut(time, bins=edges, right=False, include_lowest=True, labels=False)
    outside = np.flatnonzero(np.isnan(bins))
    if outside.size:
        raise SurvivalLabelError(
            f"{outside.size} time(s) outside the bin edges [{edges[0]:g}, {edges[-1]:g}), e.g. {time[outside[0]]:g}"
        )
    return np.asarray(bins, dtype=np.int64)
