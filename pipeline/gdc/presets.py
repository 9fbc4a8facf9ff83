"""TCGA task presets: which projects to query and how a file's GDC metadata becomes a class label.

NSCLC and RCC take the label from the project (one project per subtype). BRCA is one project, so the label comes
from the case's primary diagnosis (ICD-O-3 terms as the GDC spells them); every other diagnosis (mixed ductal and
lobular, mucinous, metaplastic, not reported, ...) is left out and counted, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Labelled:
    """A file's label, or the reason it has none (`label` is None then)."""

    label: str | None
    reason: str = ""


@dataclass(frozen=True)
class TaskPreset:
    name: str
    classes: tuple[str, ...]  # label order = class index order downstream
    by_project: Mapping[str, str] = field(default_factory=dict)  # project -> label
    by_diagnosis: Mapping[str, str] = field(default_factory=dict)  # primary diagnosis (lower case) -> label
    projects: tuple[str, ...] = ()
    description: str = ""

    def label(self, project: str, diagnoses: list[str]) -> Labelled:
        """The class of one file from its project and its case's primary diagnoses."""
        if project not in self.projects:
            return Labelled(None, f"project {project or 'missing'}")
        if self.by_project:
            return Labelled(self.by_project[project])
        found = {
            self.by_diagnosis[d.strip().lower()] for d in diagnoses if d and d.strip().lower() in self.by_diagnosis
        }
        if len(found) == 1:
            return Labelled(found.pop())
        if len(found) > 1:
            return Labelled(None, "diagnosis conflicting: " + " / ".join(sorted(set(diagnoses))))
        shown = " / ".join(sorted({d for d in diagnoses if d})) or "not reported"
        return Labelled(None, f"diagnosis {shown}")


PRESETS: dict[str, TaskPreset] = {
    p.name: p
    for p in (
        TaskPreset(
            name="tcga_nsclc",
            classes=("LUAD", "LUSC"),
            by_project={"TCGA-LUAD": "LUAD", "TCGA-LUSC": "LUSC"},
            projects=("TCGA-LUAD", "TCGA-LUSC"),
            description="lung adenocarcinoma vs. squamous cell carcinoma, label from the project",
        ),
        TaskPreset(
            name="tcga_rcc",
            classes=("CCRCC", "CHRCC", "PRCC"),
            by_project={"TCGA-KIRC": "CCRCC", "TCGA-KICH": "CHRCC", "TCGA-KIRP": "PRCC"},
            projects=("TCGA-KICH", "TCGA-KIRC", "TCGA-KIRP"),
            description="clear cell vs. chromophobe vs. papillary renal cell carcinoma, label from the project",
        ),
        TaskPreset(
            name="tcga_brca",
            classes=("IDC", "ILC"),
            by_diagnosis={"infiltrating duct carcinoma, nos": "IDC", "lobular carcinoma, nos": "ILC"},
            projects=("TCGA-BRCA",),
            description="invasive ductal vs. lobular breast carcinoma, label from the primary diagnosis",
        ),
    )
}


def get_preset(name: str, projects: list[str] | None = None) -> TaskPreset:
    """The named preset, optionally narrowed to some of its own projects (e.g. a two-class RCC trial)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise PipelineError(f"unknown GDC task {name!r}; known tasks: {', '.join(sorted(PRESETS))}") from None
    if not projects:
        return preset
    unknown = sorted(set(projects) - set(preset.projects))
    if unknown:
        raise PipelineError(
            f"project(s) {', '.join(unknown)} are not part of task {name}; "
            f"it labels {', '.join(preset.projects)} (gdc.projects may only narrow that list)"
        )
    narrowed = tuple(p for p in preset.projects if p in projects)
    classes = preset.classes
    if preset.by_project:
        kept = {preset.by_project[p] for p in narrowed}
        classes = tuple(c for c in preset.classes if c in kept)
    return TaskPreset(preset.name, classes, preset.by_project, preset.by_diagnosis, narrowed, preset.description)
