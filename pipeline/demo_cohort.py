"""The demo cohort's slide ids, patients and labels, known before any slide is rendered (the workflow reads them
while it builds the DAG, so this module needs only the standard library)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSlide:
    slide_id: str
    case_id: str
    label: str


def demo_slides(classes: list[str] | tuple[str, ...], slides_per_class: int) -> list[DemoSlide]:
    """The cohort's slide ids, case ids and labels. The first two slides of a class share a patient."""
    out: list[DemoSlide] = []
    for label in classes:
        for i in range(slides_per_class):
            case = f"DEMO-{label[:3].upper()}-{max(i, 1):02d}"
            out.append(DemoSlide(f"demo_{label}_{i:02d}", case, label))
    return out
