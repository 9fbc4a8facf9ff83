"""Survival labels (event, time in days) from the clinical fields of a GDC case.

The GDC records a case's vital status and days to death in `demographic`, and days of follow-up both per diagnosis
(`diagnoses.days_to_last_follow_up`, where it used to live) and per follow-up visit
(`follow_ups.days_to_follow_up`, where it moved), so both are read. A dead case's time is its days to death; an
alive (censored) case's time is the longest follow-up of either kind. A case that gives no usable time gets the
reason instead, so the cohort sheet says why a slide cannot serve a survival task. Free of torch and of the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: the clinical fields to request, relative to a case (query.py asks for `cases.` + each)
CASE_FIELDS = (
    "demographic.vital_status",
    "demographic.days_to_death",
    "diagnoses.days_to_last_follow_up",
    "follow_ups.days_to_follow_up",
)


@dataclass(frozen=True)
class Survival:
    """A patient's survival label: event 1 = died at `time_days`, 0 = alive (censored) at `time_days`."""

    event: int
    time_days: float


def format_days(value: float) -> str:
    """Days as the sheets write them: `400`, not `400.0` (the GDC reports whole days)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def days_of(value: Any) -> float | None:
    """A day count as given (negative ones included, for the reason), or None: missing, null, 'Not Reported', text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:  # "Not Reported", "Unknown", "not reported", ""
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _records(value: Any) -> list[dict[str, Any]]:
    """The dicts of a nested field: `demographic` is a dict (sometimes a list of one), the others are lists."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _follow_up_days(case: dict[str, Any]) -> tuple[list[float], list[str]]:
    """Every usable follow-up day count of the case (both places), and the negative ones described."""
    usable: list[float] = []
    negative: list[str] = []
    for group, key in (("diagnoses", "days_to_last_follow_up"), ("follow_ups", "days_to_follow_up")):
        for record in _records(case.get(group)):
            days = days_of(record.get(key))
            if days is not None and days >= 0:
                usable.append(days)
            elif days is not None:
                negative.append(f"negative {key} {days:g}")
    return usable, negative


def _demographic(case: dict[str, Any]) -> dict[str, Any] | str:
    """The case's one demographic record, or why there is none to read (none, or several that disagree)."""
    records = _records(case.get("demographic"))
    distinct = {(repr(r.get("vital_status")), repr(r.get("days_to_death"))): r for r in records}
    if len(distinct) > 1:
        return f"{len(distinct)} differing demographic records"
    return next(iter(distinct.values())) if distinct else "no demographic record"


def survival_of(case: dict[str, Any]) -> Survival | str:
    """The survival label of one case as the `/files` endpoint nests it under `cases[0]`, or why there is none.

    Dead: time = days_to_death (a dead case without it is unusable: its follow-up would understate the time).
    Alive: time = the longest follow-up over all diagnoses and follow-ups. Day 0 is a usable time.
    """
    demographic = _demographic(case)
    if isinstance(demographic, str):
        return demographic
    status = str(demographic.get("vital_status") or "").strip()
    if status.lower() == "dead":
        days = days_of(demographic.get("days_to_death"))
        if days is None:
            return "dead without days_to_death"
        if days < 0:
            return f"negative days_to_death {days:g}"
        return Survival(1, days)
    if status.lower() == "alive":
        usable, negative = _follow_up_days(case)
        if usable:
            return Survival(0, max(usable))
        return "alive without any follow-up days" + (f" ({', '.join(negative)})" if negative else "")
    return f"vital status '{status}'" if status else "vital status missing"
