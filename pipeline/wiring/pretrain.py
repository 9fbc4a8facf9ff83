"""HLSS in the workflow: which backbones are pretrained here, on which slides, with which flags (torch-free)."""

from __future__ import annotations

from typing import Any, Iterable

from pipeline.features.backbones.hlss import vlm_of
from pipeline.pretrain.config import FLAG_NAMES, PretrainConfig
from pipeline.settings import section_flags
from pipeline.wiring import layout

#: keys of config.yaml's `pretrain:` section that the workflow uses itself (the rest are PretrainConfig fields)
WORKFLOW_KEYS = ("slides", "exclude_slides", "attributes", "tiles_per_slide", "device", "threads", "knn_k",
                 "knn_patches_per_slide", "knn_folds")
#: task types the kNN / zero-shot evaluation runs on (it needs one class label per slide)
EVALUATED_TYPES = ("classification", "hierarchical")


def hlss_backbones(backbones: dict[str, dict[str, Any]]) -> dict[str, str]:
    """`{vlm}_hlss` backbones of features.backbones -> their VLM, which must be listed too (its weights are what
    HLSS adapts, and its features are the "before" of the evaluation)."""
    found = {name: vlm for name in backbones if (vlm := vlm_of(name))}
    missing = sorted({vlm for vlm in found.values() if vlm not in backbones})
    if missing:
        raise ValueError(
            f"config: features.backbones lists {sorted(found)} but not the VLM(s) {missing} they adapt; list them "
            "too (their weights and tokenizer are the ones HLSS pretrains on)"
        )
    return found


def fill_hlss_weights(backbones: dict[str, dict[str, Any]], out: str) -> dict[str, dict[str, Any]]:
    """An HLSS backbone without `weights` gets the checkpoint the pretrain rule writes (`pretrained: True`); one
    with weights (a checkpoint made elsewhere) is used as it is."""
    filled = {}
    for name, entry in backbones.items():
        entry = dict(entry)
        if vlm_of(name):
            entry["pretrained"] = not entry["weights"]
            if entry["pretrained"]:
                entry["weights"] = f"{out}/{layout.HLSS_CHECKPOINT.format(backbone=name)}"
        filled[name] = entry
    return filled


def pretrained_here(backbones: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, entry in backbones.items() if entry.get("pretrained")]


def adapted_here(backbones: dict[str, dict[str, Any]], section: dict[str, Any], source: str) -> list[str]:
    """HLSS backbones pretrained here with the tower frozen: their features are the VLM's, adapted by one job
    (rule adapt_features) instead of a second extraction from the slides. Not for a GDC cohort, whose slides are
    known only after the query (one job's outputs must be known when the workflow starts): there they are
    extracted."""
    if section["trainable"] != "adapter" or source == "gdc":
        return []
    return pretrained_here(backbones)


def pretrain_slides(section: dict[str, Any], usable: Iterable[str], cohort: Iterable[str]) -> list[str]:
    """`pretrain.slides` (default: every usable slide) less `pretrain.exclude_slides`; names must be in the cohort."""
    cohort = set(cohort)
    unknown = sorted((set(section["slides"]) | set(section["exclude_slides"])) - cohort)
    if unknown:
        raise ValueError(f"config: pretrain.slides / exclude_slides name slides that are not in the cohort: {unknown}")
    chosen = list(section["slides"]) or list(usable)
    left = [s for s in chosen if s not in set(section["exclude_slides"])]
    if not left:
        raise ValueError("config: pretrain.slides less pretrain.exclude_slides leaves no slide to pretrain on")
    return left


def pretrain_flags(section: dict[str, Any]) -> str:
    """Flags of the pretrain command from config.yaml's `pretrain:` section (its PretrainConfig fields)."""
    return section_flags(section, PretrainConfig, "config: pretrain", skip=WORKFLOW_KEYS, renamed=FLAG_NAMES)


def evaluated_tasks(tasks: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, task in tasks.items() if task["type"] in EVALUATED_TYPES]
