"""The HLSS pretraining loop: tile pool -> batches -> VLM tower -> adapter -> heads -> hierarchical loss.

Only the adapter, the heads and (`trainable: last_blocks`) the tower's last blocks learn; the text tower and the
attribute text embeddings stay fixed. Every `checkpoint_every` steps the whole state (weights, optimiser,
scheduler, loss history) is saved atomically; a rerun after a kill continues from it when nothing that decides the
run changed, and because batch n depends only on (seed, n) the resumed run is the run that was interrupted.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.device import autocast, resolve_device
from pipeline.features.architectures.base import Backbone
from pipeline.formats import PathLike, TilePoolIndex, TileReader, atomic_path, read_tile_pool_index
from pipeline.pretrain.attributes import HlssAttributes, embed_attributes, load_hlss_attributes
from pipeline.pretrain.batches import Batch, BatchShape, BatchSource, Hierarchy
from pipeline.pretrain.checkpoint import save_hlss_checkpoint
from pipeline.pretrain.config import PretrainConfig
from pipeline.pretrain.loss import HlssLoss
from pipeline.pretrain.model import LEVELS, LevelHeads, ResidualAdapter, last_block_parameters
from pipeline.seeding import seeded
from pipeline.tables import write_csv

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PretrainOutputs:
    checkpoint: Path  # hlss.pt, the `{vlm}_hlss` backbone's weights
    state: Path  # resumable state (not a workflow output: it survives a failed job)
    losses: Path  # losses.csv, one row per step
    curve: Path  # loss.png


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction of the steps, then cosine decay to zero."""
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class HlssModel(nn.Module):
    """What pretraining optimises around a fixed VLM: tower (partly tuned, or frozen) -> adapter -> heads."""

    def __init__(self, vlm: Backbone, attribute_embeddings: dict[str, np.ndarray], config: PretrainConfig):
        super().__init__()
        self.vlm = vlm
        self.adapter = ResidualAdapter(vlm.embed_dim, config.adapter_hidden)
        self.heads = LevelHeads(attribute_embeddings)
        for level in LEVELS:
            self.register_buffer(f"attributes_{level}", torch.as_tensor(attribute_embeddings[level], dtype=torch.float32))
        self.tower = last_block_parameters(vlm.model, config.last_blocks) if config.trainable == "last_blocks" else {}
        for p in self.tower.values():
            p.requires_grad_(True)

    def attributes(self) -> dict[str, Tensor]:
        return {level: getattr(self, f"attributes_{level}") for level in LEVELS}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.adapter.parameters(), *self.heads.parameters(), *self.tower.values()]

    def embed(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, S, S] on the model's device -> adapted embeddings e [B, D] (not normalised)."""
        x = self.vlm.preprocess.normalize(images)
        with autocast(x.device, self.vlm.cfg.precision), torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.tower)):
            f = self.vlm.encode_image(x)
        return self.adapter(f.float())

    def forward(self, images: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        e_hat = F.normalize(self.embed(images), dim=-1)
        return self.heads(e_hat), e_hat

    def state(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter.state_dict(),
            "heads": self.heads.state_dict(),
            "tower": {name: p.detach().cpu().clone() for name, p in self.tower.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.adapter.load_state_dict(state["adapter"])
        self.heads.load_state_dict(state["heads"])
        with torch.no_grad():
            for name, p in self.tower.items():
                p.copy_(state["tower"][name])


def loss_of_batch(model: HlssModel, objective: HlssLoss, batch: Batch, device: torch.device):
    projections, e_hat = model(batch.images.to(device, non_blocking=True))
    groups = {level: g.to(device) for level, g in batch.groups.items()}
    return objective(projections, e_hat, groups, model.attributes())


def _run_identity(vlm: Backbone, config: PretrainConfig, index: TilePoolIndex, attributes: HlssAttributes
                  ) -> dict[str, Any]:
    """What must be equal for a saved state to be resumed: settings, VLM weights, attribute texts, tile pool."""
    assert vlm.weights is not None
    return {
        "settings": config.to_dict(),
        "vlm": vlm.cfg.name,
        "vlm_weights_sha256": vlm.weights.sha256,
        "vlm_weights_seed": vlm.weights.seed,
        "attributes_sha256": attributes.digest(),
        "pool": {"slides": index.slide_ids, "tiles": len(index), "seed": int(index.attrs.get("seed", 0)),
                 "tiles_per_slide": int(index.attrs.get("tiles_per_slide", 0))},
    }


def _resumable(state_path: Path, identity: dict[str, Any], config: PretrainConfig) -> dict[str, Any] | None:
    if not state_path.is_file():
        return None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a state file written by another version, or damaged: start again, say why
        log.warning("cannot read pretraining state %s (%s: %s); starting from step 0", state_path,
                    type(err).__name__, err)
        return None
    saved = state.get("identity", {})
    same = {k: v for k, v in saved.items() if k != "settings"} == {k: v for k, v in identity.items() if k != "settings"}
    if not (same and config.resumable_from(saved.get("settings", {}))):
        log.warning("pretraining state %s belongs to another run (settings, VLM, attributes or tile pool changed); "
                    "starting from step 0", state_path)
        return None
    return state


def _save_state(path: Path, identity: dict[str, Any], step: int, model: HlssModel, optimizer, scheduler,
                history: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"identity": identity, "step": step, "model": model.state(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "history": history}, tmp)


def plot_losses(history: pd.DataFrame, title: str, path: Path) -> None:
    """Total loss and each level's contrastive and alignment term per step (light: raw; dark: moving mean)."""
    from pipeline.figures import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    window = max(1, len(history) // 20)
    for ax, columns in zip(axes, (["loss"] + [f"contrast_{lv}" for lv in LEVELS], [f"align_{lv}" for lv in LEVELS])):
        for column in columns:
            line, = ax.plot(history["step"], history[column], alpha=0.25)
            ax.plot(history["step"], history[column].rolling(window, min_periods=1).mean(), color=line.get_color(),
                    label=column)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss")
    axes[0].set_title("total and supervised contrastive terms", fontsize=9)
    axes[1].set_title("text-alignment terms", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def pretrain(
    pool: PathLike,
    attributes_path: PathLike,
    vlm: Backbone,
    outputs: PretrainOutputs,
    config: PretrainConfig,
    device: str = "auto",
    vlm_weights_arg: str | None = None,
) -> dict[str, Any]:
    """Pretrain an adapter on `vlm` (a built backbone) over the tile pool; write checkpoint, losses and curve.

    `vlm_weights_arg` is how the VLM's weights were asked for (a path, a hub id, "random"); the checkpoint keeps it
    so `{vlm}_hlss` can rebuild the same VLM. Returns the checkpoint payload.
    """
    pool = Path(pool)
    dev = resolve_device(device)
    attributes = load_hlss_attributes(attributes_path)
    vlm.to(dev)
    with torch.no_grad():
        attribute_embeddings = embed_attributes(vlm, attributes)
    with seeded(config.seed):
        model = HlssModel(vlm, attribute_embeddings, config).to(dev)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.steps, config.warmup))
    index = read_tile_pool_index(pool)
    identity = _run_identity(vlm, config, index, attributes)
    start, history = 0, []
    state = _resumable(outputs.state, identity, config)
    if state is not None:
        model.load_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])
        log.info("resuming pretraining from step %d of %d (%s)", start, config.steps, outputs.state)
    objective = HlssLoss(config.temperature, config.align_weight, config.align_temperature)
    shape = BatchShape(config.patients_per_step, config.slides_per_patient, config.patches_per_slide, config.views)
    with TileReader(pool) as tiles:
        source = BatchSource(tiles, Hierarchy(index), shape, vlm.cfg.input_size, config.seed)
        bar = tqdm(total=config.steps, initial=start, desc=f"HLSS pretraining on {vlm.cfg.name}", unit="step",
                   file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
        for step in range(start, config.steps):
            total, parts = loss_of_batch(model, objective, source(step), dev)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            history.append({"step": step + 1, "lr": scheduler.get_last_lr()[0], **parts})
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                _save_state(outputs.state, identity, step + 1, model, optimizer, scheduler, history)
        bar.close()
    frame = pd.DataFrame(history)
    write_csv(outputs.losses, frame)
    plot_losses(frame, f"HLSS pretraining of {vlm.cfg.name}: {len(index.slide_ids)} slides, "
                f"{len(set(index.case_ids))} patients, {config.steps} steps", outputs.curve)
    assert vlm.weights is not None
    payload = {
        "vlm": vlm.cfg.name,
        "vlm_weights": vlm_weights_arg,
        "vlm_weights_sha256": vlm.weights.sha256,
        "vlm_weights_seed": vlm.weights.seed,
        "embed_dim": vlm.embed_dim,
        "adapter_hidden": config.adapter_hidden,
        **model.state(),
        "trainable": config.trainable,
        "attributes": {"sha256": attributes.digest(), "levels": attributes.to_json(), "source": str(attributes_path)},
        "settings": config.to_dict(),
        "pool": identity["pool"],
        "step": config.steps,
    }
    payload["adapter"] = {k: v.cpu() for k, v in payload["adapter"].items()}
    payload["heads"] = {k: v.cpu() for k, v in payload["heads"].items()}
    save_hlss_checkpoint(outputs.checkpoint, payload)
    first, last = frame["loss"].iloc[: max(1, len(frame) // 10)].mean(), frame["loss"].iloc[-max(1, len(frame) // 10):].mean()
    log.info("HLSS pretraining done: loss %.4f -> %.4f (mean of first / last tenth of steps); checkpoint %s",
             first, last, outputs.checkpoint)
    return payload
