"""The tcga_organ preset (lung, kidney, breast subtypes under their organ) and the prompt files beside it.

The organ task mixes two ways of labelling (project, then diagnosis for BRCA), so these tests pin both paths, the
narrowing that must follow them, and that the older presets did not move. The prompt files must stay in step with
the labels: class order in a prompt file is label order downstream.
"""

from __future__ import annotations

import json

import pytest

from pipeline.gdc import get_preset
from pipeline.gdc.presets import Labelled
from pipeline.prompt_files import PROMPTS_DIR, load_prompts

ORGAN_CLASSES = ("LUAD", "LUSC", "CCRCC", "CHRCC", "PRCC", "IDC", "ILC")


def _raw(name: str) -> dict[str, dict[str, str]]:
    """A shipped prompt file as plain JSON, to compare entries independently of the validator."""
    return json.loads((PROMPTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def test_organ_labels_from_project_and_from_brca_diagnosis() -> None:
    organ = get_preset("tcga_organ")
    assert organ.classes == ORGAN_CLASSES
    assert organ.label("TCGA-LUAD", []).label == "LUAD"
    assert organ.label("TCGA-KIRP", ["Papillary adenocarcinoma, NOS"]).label == "PRCC"
    assert organ.label("TCGA-BRCA", ["Lobular carcinoma, NOS"]).label == "ILC"
    assert organ.label("TCGA-BRCA", ["Infiltrating duct carcinoma, NOS"]).label == "IDC"
    mucinous = organ.label("TCGA-BRCA", ["Mucinous adenocarcinoma"])
    assert mucinous.label is None and mucinous.reason == "diagnosis Mucinous adenocarcinoma"
    assert organ.label("TCGA-BRCA", []).reason == "diagnosis not reported"
    assert organ.label("TCGA-PAAD", []).label is None


def test_organ_narrowing_keeps_the_classes_its_projects_can_reach() -> None:
    narrowed = get_preset("tcga_organ", ["TCGA-BRCA", "TCGA-KIRC"])
    assert narrowed.classes == ("CCRCC", "IDC", "ILC")
    assert narrowed.projects == ("TCGA-KIRC", "TCGA-BRCA")
    assert dict(narrowed.tree) == {"kidney": ("CCRCC",), "breast": ("IDC", "ILC")}
    assert narrowed.label("TCGA-LUAD", []).label is None  # a dropped project is out again
    assert get_preset("tcga_organ", ["TCGA-LUSC"]).classes == ("LUSC",)


@pytest.mark.parametrize(
    ("task", "project", "diagnoses", "label", "reason"),
    [
        ("tcga_nsclc", "TCGA-LUAD", [], "LUAD", ""),
        ("tcga_nsclc", "TCGA-LUSC", ["Squamous cell carcinoma, NOS"], "LUSC", ""),
        ("tcga_nsclc", "TCGA-BRCA", [], None, "project TCGA-BRCA"),
        ("tcga_rcc", "TCGA-KICH", [], "CHRCC", ""),
        ("tcga_rcc", "", [], None, "project missing"),
        ("tcga_brca", "TCGA-BRCA", [" lobular carcinoma, nos "], "ILC", ""),
        ("tcga_brca", "TCGA-BRCA", ["Infiltrating duct and lobular carcinoma"], None,
         "diagnosis Infiltrating duct and lobular carcinoma"),
        ("tcga_brca", "TCGA-BRCA", ["Lobular carcinoma, NOS", "Infiltrating duct carcinoma, NOS"], None,
         "diagnosis conflicting: Infiltrating duct carcinoma, NOS / Lobular carcinoma, NOS"),
    ],
)
def test_older_presets_label_as_before(
    task: str, project: str, diagnoses: list[str], label: str | None, reason: str
) -> None:
    assert get_preset(task).label(project, diagnoses) == Labelled(label, reason)


def test_older_presets_keep_their_classes_narrowing_and_flat_tree() -> None:
    assert get_preset("tcga_rcc", ["TCGA-KIRP", "TCGA-KIRC"]).classes == ("CCRCC", "PRCC")
    assert get_preset("tcga_brca", ["TCGA-BRCA"]).classes == ("IDC", "ILC")
    assert get_preset("tcga_nsclc").projects == ("TCGA-LUAD", "TCGA-LUSC")
    assert all(not get_preset(t).tree for t in ("tcga_nsclc", "tcga_rcc", "tcga_brca"))


def test_organ_prompt_file_matches_the_preset_and_its_sources() -> None:
    organ = get_preset("tcga_organ")
    prompts = load_prompts(PROMPTS_DIR / "tcga_organ.json", organ.classes)
    assert tuple(prompts.labels) == organ.classes
    raw = _raw("tcga_organ")
    assert tuple(raw) == organ.classes
    sources = {**_raw("tcga_nsclc"), **_raw("tcga_rcc"), **_raw("tcga_brca")}
    for cls, entries in raw.items():
        assert list(entries.items()) == list(sources[cls].items()), cls  # same entries in the same order


def test_demo_tree_prompts_and_organ_tree_are_consistent() -> None:
    labels = ["regular_glands", "atypical_glands", "small_cell", "large_cell"]
    prompts = load_prompts(PROMPTS_DIR / "demo_tree.json", labels)
    assert prompts.labels == labels
    assert all(len(c.coarse) == 4 and len(c.fine) == 12 for c in prompts.classes)
    organ = get_preset("tcga_organ")
    assert list(organ.tree) == ["lung", "kidney", "breast"]
    assert tuple(f for fines in organ.tree.values() for f in fines) == organ.classes


def test_schema_gdc_task_enum_lists_every_preset():
    import yaml

    from pipeline.gdc.presets import PRESETS
    from pipeline.wiring.cohort import SCHEMA

    enum = yaml.safe_load(SCHEMA.read_text())["properties"]["gdc"]["properties"]["task"]["enum"]
    assert sorted(enum) == sorted(PRESETS)
