"""Checkpoints: a method's trained weights plus everything needed to rebuild and check it, loaded weights-only.

A checkpoint names its method, task (name, type, classes, texts), backbone, feature size and logit scale, and
carries what the method needs at prediction (HiVE-MIL: the learned prompts' text features), so prediction builds
no backbone. `load_checkpoint` refuses a file of another format, backbone or class set, naming both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.formats import PathLike, atomic_path
from pipeline.labels import LabelTree
from pipeline.settings import to_dict
from pipeline.training.config import TrainConfig
from pipeline.training.methods import get_method
from pipeline.training.methods.base import Method
from pipeline.training.tasks import get_task_type

CHECKPOINT_FORMAT = "hive-wsi-checkpoint/3"  # 3: method and task settings stored apart from the config


class CheckpointError(PipelineError):
    """A checkpoint cannot be used here (another backbone, class set, method or format)."""


def save_checkpoint(
    path: PathLike, method: Method, model: nn.Module, backbone: str, embed_dim: int, logit_scale: float | None,
    extra: dict[str, Any],
) -> None:
    """The model's state dict (no backbone weights) and what is needed to rebuild and check it."""
    task = method.task
    payload = {
        "format": CHECKPOINT_FORMAT,
        "hive_wsi_version": __version__,
        "method": method.name,
        "task": task.name,
        "task_type": task.type_name,
        "backbone": backbone,
        "classes": list(task.classes),
        "texts": list(task.texts),
        "label_tree": None if task.tree is None else task.tree.as_mapping(),
        "task_state": task.checkpoint_state(),
        "embed_dim": int(embed_dim),
        "logit_scale": None if logit_scale is None else float(logit_scale),
        "config": method.config.to_dict(),
        "settings": to_dict(method.settings),
        "task_settings": to_dict(task.settings),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **method.inference_payload(model),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: PathLike, backbone: str | None = None, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Load with `weights_only=True`; refuse a checkpoint of another backbone or class set, naming both."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise CheckpointError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a hive-wsi checkpoint (format {CHECKPOINT_FORMAT})")
    if backbone is not None and ckpt["backbone"] != backbone:
        raise CheckpointError(f"checkpoint {path} was trained on backbone '{ckpt['backbone']}' features, not '{backbone}'")
    if classes is not None and list(ckpt["classes"]) != list(classes):
        raise CheckpointError(f"checkpoint {path} was trained on classes {ckpt['classes']}, not {list(classes)}")
    return ckpt


def method_of(ckpt: dict[str, Any]) -> Method:
    """The registered method of a checkpoint, bound to the checkpoint's task and config."""
    tree = ckpt.get("label_tree")
    task = get_task_type(ckpt["task_type"])(
        ckpt["task"], list(ckpt["classes"]), {}, list(ckpt["texts"]), LabelTree.from_mapping(tree) if tree else None,
        ckpt["task_settings"], **ckpt.get("task_state", {}),
    )
    return get_method(ckpt["method"])(TrainConfig.from_dict(ckpt["config"]), task, ckpt["settings"])


def restore_model(ckpt: dict[str, Any], device: torch.device) -> nn.Module:
    """Rebuild a checkpoint's trained model in eval mode (no backbone is built)."""
    return method_of(ckpt).restore(ckpt, device)
