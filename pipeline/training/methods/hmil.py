"""HMIL on a label tree (pipeline.model.hmil): both levels from the 20x instances, trained in batches of slides.

Instances are a slide's valid 20x patches (the fine task needs their detail; a slide without any falls back to
its 5x patches). One step takes `batch_size` slides because the supervised contrastive loss compares them;
the loss is alpha L_coarse + L_fine + L_align + (1 - alpha) L_supcon + w L_attention, alpha = 1 - (e/E)^2, and the
learning rate drops x0.1 after `lr_patience` epochs without a lower validation loss (the paper's schedule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.settings import option
from pipeline.training.methods.base import Method, Resources, explained_class
from pipeline.training.registry import register_method

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from pipeline.explain.scores import PatchScores
    from pipeline.training.data import SlideBag
    from pipeline.training.tasks import Hierarchical


def instances(bag: "SlideBag", device: "torch.device") -> "Tensor":
    """The slide's valid 20x children `[M, D]` (its 5x patches if it has none)."""
    x5, x20, mask = bag.on(device)
    children = x20[mask]
    return children if len(children) else x5


@dataclass(frozen=True)
class HMILSettings:
    epochs: int = option(200, "epochs E, also the length of the alpha = 1 - (e/E)^2 and temperature schedules "
                         "(paper 200)")
    patience: int = option(200, "early-stopping patience; 200 = none: all epochs run and the best is kept (public "
                           "code)")
    batch_size: int = option(64, "slides per step: its supervised contrastive loss compares them (paper 64)")
    hidden: int = option(256, "projection and coarse attention size (paper 256)")
    fine_attention_hidden: int = option(64, "fine-level attention size (paper 64)")
    attention_weight: float = option(1.0, "weight of the attention-matching loss (the paper adds it; the public "
                                     "code does not)")
    lr_patience: int = option(5, "epochs without a lower validation loss before the learning rate drops x0.1 "
                              "(paper 5)")

    def __post_init__(self) -> None:
        if min(self.epochs, self.patience, self.batch_size) < 1:
            raise ValueError(f"epochs, patience and batch_size must be >= 1, got {self.epochs}, {self.patience}, "
                             f"{self.batch_size}")


@register_method("hmil", task_types=("hierarchical",), inputs=("20x",),
                 summary="HMIL: class-wise attention at coarse and fine level of a label tree, coupled by 4 losses",
                 settings=HMILSettings)
class HMILMethod(Method):
    task: "Hierarchical"
    settings: HMILSettings

    def build(self, resources: Resources) -> "nn.Module":
        from pipeline.model.hmil import HMIL

        s = self.settings
        model = HMIL(resources.embed_dim, self.task.n_coarse, len(self.task.classes), hidden=s.hidden,
                     fine_attention_hidden=s.fine_attention_hidden)
        return model.to(resources.device)

    def logits(self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None) -> tuple["Tensor", "Tensor"]:
        """Coarse and fine logits `[C_c + C_f]` (the hierarchical task splits them)."""
        import torch

        out = model(instances(bag, device))
        return torch.cat([out.coarse_logits, out.fine_logits]), out.fine_logits.new_zeros(())

    def explain(
        self, model: "nn.Module", bag: "SlideBag", device: "torch.device", cache: Any = None, target: int | None = None
    ) -> "PatchScores":
        """Class-wise attention of fine class `target` and of its tree parent at the coarse level, over the 20x
        children `[N, 16]` (padding NaN); over the 5x patches for a slide without children (what HMIL then reads)."""
        import torch

        from pipeline.explain.scores import PatchScores, scatter_children

        x5, _, mask = bag.on(device)
        with torch.no_grad():
            out = model(instances(bag, device))
        fine = explained_class(out.fine_logits, target)
        coarse = self.task.label_tree.parent[fine]
        rows = {
            f"attention (coarse: {self.task.label_tree.coarse[coarse]})": out.coarse_attention[coarse],
            f"attention (fine: {self.task.classes[fine]})": out.fine_attention[fine],
        }
        maps = {name: a.float().cpu().numpy() for name, a in rows.items()}
        parent, slot = mask.bool().nonzero(as_tuple=True)
        if not len(parent):
            return PatchScores(maps, {}, "attention")
        parent, slot = parent.cpu().numpy(), slot.cpu().numpy()
        return PatchScores({}, {n: scatter_children(a, parent, slot, len(x5)) for n, a in maps.items()}, "attention")

    def training_loss(
        self, model: "nn.Module", batch: "list[tuple[SlideBag, Any]]", device: "torch.device", epoch: int, epochs: int
    ) -> "Tensor":
        import torch
        import torch.nn.functional as F

        from pipeline.model.hmil import (
            attention_matching_loss,
            bag_alignment_loss,
            curriculum_alpha,
            supcon_temperature,
            supervised_contrastive_loss,
        )

        parent = self.task.label_tree.parent
        outs = [model(instances(bag, device)) for bag, _ in batch]
        fine_t = torch.tensor([t for _, t in batch], device=device)
        coarse_t = torch.tensor([parent[t] for _, t in batch], device=device)
        coarse_logits = torch.stack([o.coarse_logits for o in outs])
        fine_logits = torch.stack([o.fine_logits for o in outs])
        alpha = curriculum_alpha(epoch, epochs)
        loss = (
            alpha * F.cross_entropy(coarse_logits, coarse_t)
            + F.cross_entropy(fine_logits, fine_t)
            + bag_alignment_loss(fine_logits, coarse_t, parent, self.task.n_coarse)
            + (1.0 - alpha) * supervised_contrastive_loss(
                torch.stack([o.fine_bags for o in outs]), fine_t, supcon_temperature(epoch, epochs)
            )
        )
        if self.settings.attention_weight:
            matching = torch.stack([attention_matching_loss(o.coarse_attention, o.fine_attention, parent) for o in outs])
            loss = loss + self.settings.attention_weight * matching.mean()
        return loss

    def train_batch_size(self) -> int:
        return self.settings.batch_size

    def max_epochs(self) -> int:
        return self.settings.epochs

    def patience(self) -> int:
        return self.settings.patience

    def lr_scheduler(self, optimizer: "torch.optim.Optimizer") -> Any:
        import torch

        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=self.settings.lr_patience)
