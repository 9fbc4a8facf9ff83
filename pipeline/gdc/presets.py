"""TCGA task presets: which projects to query and how a file's GDC metadata becomes a class label.

NSCLC and RCC take the label from the project (one project per subtype). BRCA is one project, so the label comes
from the case's primary diagnosis (ICD-O-3 terms as the GDC spells them); every other diagnosis (mixed ductal and
lobular, mucinous, metaplastic, not reported, ...) is left out and counted, never guessed. The organ task joins
the three: the project labels lung and kidney files, the diagnosis labels BRCA ones, and its `tree` groups the
subtypes under their organ.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Labelled:
    """A file's label, or the reason it has none (`label` is None then)."""

    label: str | None
    reason: str = ""


@dataclass(frozen=True)
class TaskPreset:
    """A TCGA task: a project in `by_project` names its label; any other of `projects` is labelled by diagnosis."""

    name: str
    classes: tuple[str, ...]  # label order = class index order downstream
    by_project: Mapping[str, str] = field(default_factory=dict)  # project -> label
    by_diagnosis: Mapping[str, str] = field(default_factory=dict)  # primary diagnosis (lower case) -> label
    projects: tuple[str, ...] = ()
    description: str = ""
    tree: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # coarse -> fine labels; empty: flat task

    def label(self, project: str, diagnoses: list[str]) -> Labelled:
        """The class of one file from its project and its case's primary diagnoses."""
        if project not in self.projects:
            return Labelled(None, f"project {project or 'missing'}")
        if project in self.by_project:
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


# Each label mapping lives here once; the organ task reuses these rather than restating them.
NSCLC_BY_PROJECT: dict[str, str] = {"TCGA-LUAD": "LUAD", "TCGA-LUSC": "LUSC"}
RCC_BY_PROJECT: dict[str, str] = {"TCGA-KIRC": "CCRCC", "TCGA-KICH": "CHRCC", "TCGA-KIRP": "PRCC"}
BRCA_BY_DIAGNOSIS: dict[str, str] = {"infiltrating duct carcinoma, nos": "IDC", "lobular carcinoma, nos": "ILC"}

_NSCLC = TaskPreset(
    name="tcga_nsclc",
    classes=("LUAD", "LUSC"),
    by_project=NSCLC_BY_PROJECT,
    projects=("TCGA-LUAD", "TCGA-LUSC"),
    description="lung adenocarcinoma vs. squamous cell carcinoma, label from the project",
)
_RCC = TaskPreset(
    name="tcga_rcc",
    classes=("CCRCC", "CHRCC", "PRCC"),
    by_project=RCC_BY_PROJECT,
    projects=("TCGA-KICH", "TCGA-KIRC", "TCGA-KIRP"),
    description="clear cell vs. chromophobe vs. papillary renal cell carcinoma, label from the project",
)
_BRCA = TaskPreset(
    name="tcga_brca",
    classes=("IDC", "ILC"),
    by_diagnosis=BRCA_BY_DIAGNOSIS,
    projects=("TCGA-BRCA",),
    description="invasive ductal vs. lobular breast carcinoma, label from the primary diagnosis",
)
_ORGAN = TaskPreset(
    name="tcga_organ",
    classes=_NSCLC.classes + _RCC.classes + _BRCA.classes,
    by_project={**NSCLC_BY_PROJECT, **RCC_BY_PROJECT},
    by_diagnosis=BRCA_BY_DIAGNOSIS,
    projects=("TCGA-LUAD", "TCGA-LUSC", "TCGA-KIRC", "TCGA-KICH", "TCGA-KIRP", "TCGA-BRCA"),
    description="lung, kidney and breast subtypes under their organ: project label for lung and kidney, "
    "primary diagnosis for BRCA",
    tree={"lung": _NSCLC.classes, "kidney": _RCC.classes, "breast": _BRCA.classes},
)
PRESETS: dict[str, TaskPreset] = {p.name: p for p in (_NSCLC, _RCC, _BRCA, _ORGAN)}


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
    # A class survives when a kept project can still yield it: its own label, or any diagnosis label otherwise.
    kept: set[str] = set()
    for project in narrowed:
        kept |= {preset.by_project[project]} if project in preset.by_project else set(preset.by_diagnosis.values())
    classes = tuple(c for c in preset.classes if c in kept)
    narrowed_tree = {coarse: tuple(f for f in fines if f in kept) for coarse, fines in preset.tree.items()}
    tree = {coarse: fines for coarse, fines in narrowed_tree.items() if fines}
    return replace(preset, classes=classes, projects=narrowed, tree=tree)
