"""HMIL: its parts, its losses, the hierarchical task's outputs, and that it learns both levels of a tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.labels import LabelTree
from pipeline.model.hmil import (
    HMIL,
    ClassGatedAttention,
    attention_matching_loss,
    bag_alignment_loss,
    coarse_log_probabilities,
    curriculum_alpha,
    supcon_temperature,
    supervised_contrastive_loss,
)
from pipeline.training.config import TrainConfig
from pipeline.training.data import SlideBag
from pipeline.training.loop import evaluate, fit, seed_everything
from pipeline.training.methods import get_method
from pipeline.training.methods.base import Resources
from pipeline.training.tasks import Hierarchical

#: tiny tensors: one torch thread (HMIL's 30-epoch training test took 400 s instead of 30 on a busy 2-core box)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TREE = LabelTree.from_mapping({"lung": ["LUAD", "LUSC"], "kidney": ["CCRCC", "CHRCC", "PRCC"]})


def test_attention_rows_sum_to_one_over_instances():
    attention = ClassGatedAttention(8, 16, 3)
    a = attention(torch.randn(11, 8))
    assert a.shape == (3, 11)
    assert torch.allclose(a.sum(1), torch.ones(3), atol=1e-6)


def test_summed_fine_probabilities_are_the_coarse_ones():
    fine_logits = torch.randn(4, 5)
    p = fine_logits.softmax(-1)
    expected = torch.stack([p[:, :2].sum(1), p[:, 2:].sum(1)], 1)
    assert torch.allclose(coarse_log_probabilities(fine_logits, TREE.parent, 2).exp(), expected, atol=1e-6)
    # the alignment loss is the NLL of those sums; the task's flat coarse scores are the same sums
    target = torch.tensor([0, 1, 1, 0])
    assert torch.isclose(bag_alignment_loss(fine_logits, target, TREE.parent, 2),
                         -expected[torch.arange(4), target].log().mean(), atol=1e-6)
    task = Hierarchical("t", list(TREE.fine), {}, [], TREE)
    out = task.outputs(fine_logits[0])
    assert np.allclose(out[:2], expected[0].numpy(), atol=1e-6)
    coarse_call = task.prediction_frame(["s"], None, out[None])["pred_coarse"][0]
    assert coarse_call == TREE.coarse[TREE.parent[int(p[0].argmax())]]  # a flat method's: its fine call's parent


def test_curriculum_and_temperature_schedules():
    assert curriculum_alpha(0, 200) == 1.0 and curriculum_alpha(200, 200) == 0.0
    assert curriculum_alpha(100, 200) == pytest.approx(0.75)
    assert supcon_temperature(0, 200) == pytest.approx(1.0)
    assert supcon_temperature(100, 200) == pytest.approx(0.1)


def test_supcon_is_finite_with_a_class_of_one_sample_and_prefers_clustered_views():
    labels = torch.tensor([0, 0, 1])  # class 1 has one slide: its positives are its own other views
    feats = torch.randn(3, 4, 8)
    loss = supervised_contrastive_loss(feats, labels, 0.5)
    assert torch.isfinite(loss)
    clustered = torch.zeros(3, 4, 8)
    clustered[:2, :, 0] = 1.0
    clustered[2, :, 1] = 1.0
    assert supervised_contrastive_loss(clustered + 0.01 * feats, labels, 0.5) < loss
    single = supervised_contrastive_loss(torch.randn(1, 1, 8), torch.tensor([0]), 0.5)
    assert torch.isfinite(single) and single == 0


def test_attention_matching_is_zero_when_levels_agree():
    a_f = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)).softmax(-1)  # seeded: not the suite's order
    a_c = torch.stack([a_f[:2].sum(0), a_f[2:].sum(0)])
    assert attention_matching_loss(a_c, a_f, TREE.parent) == pytest.approx(0.0, abs=1e-6)
    assert attention_matching_loss(a_c.flip(1), a_f, TREE.parent) > 0.01


def _synthetic_bags(n_slides: int, seed: int, dim: int = 32) -> list[tuple[SlideBag, int]]:
    """Coarse prototypes plus fine offsets carried by 15% signal instances; the rest is noise."""
    gen = np.random.default_rng(seed)
    basis = np.random.default_rng(0).normal(size=(2 + 5, dim))
    out = []
    for i in range(n_slides):
        fine = i % 5
        coarse = TREE.parent[fine]
        n = int(gen.integers(8, 14))
        x20 = gen.normal(size=(n, 16, dim)).astype(np.float32)
        signal = gen.random((n, 16)) < 0.15
        x20[signal] += (2.0 * basis[coarse] + 1.5 * basis[2 + fine]).astype(np.float32)
        mask = np.ones((n, 16), bool)
        x5 = x20.mean(1)
        bag = SlideBag(f"s{i}", torch.from_numpy(x5), torch.from_numpy(x20), torch.from_numpy(mask),
                       np.zeros((n, 2)), np.zeros((n * 16, 2)))
        out.append((bag, fine))
    return out


def test_hmil_learns_both_levels_of_a_synthetic_tree():
    task = Hierarchical("synthetic", list(TREE.fine), {}, [], TREE)
    cfg = TrainConfig(lr=1e-3, seed=3)
    method = get_method("hmil")(cfg, task, {"epochs": 30, "batch_size": 16, "patience": 30})
    train, val, test = _synthetic_bags(120, 1), _synthetic_bags(20, 2), _synthetic_bags(40, 3)
    seed_everything(cfg.seed)
    device = torch.device("cpu")
    model = method.build(Resources(embed_dim=32, device=device))
    assert isinstance(model, HMIL)
    result = fit(method, model, train, val, cfg, device)
    assert len(result.history) == 30
    ev = evaluate(method, model, [b for b, _ in test], [y for _, y in test], device)
    metrics = task.score([y for _, y in test], ev.outputs)
    assert metrics["acc_coarse"] > 0.9, metrics
    assert metrics["acc"] > 0.7, metrics
    assert metrics["consistency"] > 0.9, metrics
    frame = task.prediction_frame([b.slide_id for b, _ in test], [y for _, y in test], ev.outputs)
    assert {"label_coarse", "pred_coarse", "consistent", "prob_lung", "prob_LUAD"} <= set(frame.columns)
    assert np.allclose(frame[["prob_lung", "prob_kidney"]].sum(axis=1), 1.0, atol=1e-5)
