"""Survival-analysis building blocks: discrete time bins, the discrete-hazard loss, metrics and patient-level folds.

Modules, one job each:
- `bins`: time-bin edges at the quartiles of the uncensored patients' times, and each patient's bin;
- `loss` (torch): the discrete-hazard negative log-likelihood, survival function and risk from per-bin logits;
- `metrics` (numpy + scikit-survival, no torch): C-index, integrated Brier score, Kaplan-Meier curves of predicted
  risk groups with the log-rank test, and their plot;
- `splits`: k-fold patient-level cross-validation stratified by time bin and event, written as split files.

Conventions: per patient `event` (1 = death observed, 0 = censored) and `time` in days; censorship c = 1 - event.
"""
