"""HiVE-MIL model, training loop and baselines on tiny tensors and tiny feature files (CPU, seconds each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import SAGEConv

from pipeline.model.baselines import ABMIL, ZeroShotClassifier
from pipeline.model.graph import (
    HIER_RELATIONS,
    IMG5,
    IMG20,
    INTRA_RELATIONS,
    TXT5,
    TXT20,
    HierarchicalAttention,
    HierarchicalHeteroGNN,
    HierarchicalHeteroLayer,
)
from pipeline.model.hivemil import (
    HiveMIL,
    HiveMILConfig,
    build_slide_graph,
    fine_to_coarse,
    htcl_loss,
    score_scale,
    tgdf_keep,
    topk_class_scores,
)

from cohorts import CLASSES, prompt_json, write_classification_cohort

D = 16  # tiny feature size for graph-only tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_slide(n5: int = 6, dim: int = D, seed: int = 0, drop: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    x5 = torch.randn(n5, dim, generator=g)
    x20 = torch.randn(n5, 16, dim, generator=g)
    mask = torch.rand(n5, 16, generator=g) > drop
    mask[:, 0] = True
    return x5, x20, mask


# --- TGDF ------------------------------------------------------------------------------------------------------


def test_tgdf_keeps_exactly_entries_above_mean_plus_half_std():
    # column 0: [0, 1, 2, 5] -> min-max [0, .2, .4, 1]; mean .4, population std sqrt(.14) = .3742;
    #   threshold .4 + .5 * .3742 = .5871 -> only row 3.
    # column 1: [3, 3.5, 1, 0] -> [.8571, 1, .2857, 0]; mean .5357, std .4088; threshold .7401 -> rows 0, 1.
    sim = torch.tensor([[0.0, 3.0], [1.0, 3.5], [2.0, 1.0], [5.0, 0.0]])
    expected = torch.tensor([[False, True], [False, True], [False, False], [True, False]])
    assert torch.equal(tgdf_keep(sim, alpha=0.5), expected)
    # the rule is per column and invariant to a column's offset and positive scale
    assert torch.equal(tgdf_keep(sim * torch.tensor([3.0, 0.5]) + torch.tensor([-7.0, 2.0])), expected)
    # alpha = 0 keeps what is at or above the column mean: column 0 rows 2 (.4 = mean) and 3
    assert tgdf_keep(sim, alpha=0.0)[:, 0].tolist() == [False, False, True, True]


def test_tgdf_constant_column_keeps_all_and_empty_is_empty():
    sim = torch.tensor([[0.3, 1.0], [0.3, 2.0]])
    assert tgdf_keep(sim)[:, 0].all()
    assert tgdf_keep(torch.zeros(0, 3)).shape == (0, 3)


def test_graph_has_children_of_matched_parents_only_and_all_pairs_without_filtering():
    torch.manual_seed(0)
    n_classes = 2
    x5, x20, mask = random_slide(n5=8)
    t5, t20 = torch.randn(4 * n_classes, D), torch.randn(12 * n_classes, D)
    x5[7] = -F.normalize(t5, dim=-1).sum(0)  # points away from every coarse text: stays unmatched
    g = build_slide_graph(x5, x20, mask, t5, t20, filtering=True)
    keep5 = tgdf_keep(F.normalize(x5, dim=-1) @ F.normalize(t5, dim=-1).T)
    assert torch.equal(g.matched_5x, keep5.any(1))
    assert not g.matched_5x[7]
    expected_children = (mask & keep5.any(1, keepdim=True)).sum().item()
    assert g.x_dict[IMG20].shape == (expected_children, D)
    assert g.matched_5x[g.child_parent].all() and mask[g.child_parent, g.child_slot].all()
    # intra edges are exactly the kept entries, in both directions
    assert torch.equal(g.edge_index_dict[INTRA_RELATIONS[0]], keep5.nonzero().T)
    assert torch.equal(g.edge_index_dict[INTRA_RELATIONS[1]], keep5.nonzero().T.flip(0))
    # without filtering every masked-in child enters and every image links to every text of its scale
    g_all = build_slide_graph(x5, x20, mask, t5, t20, filtering=False)
    assert g_all.x_dict[IMG20].size(0) == mask.sum().item()
    assert g_all.edge_index_dict[INTRA_RELATIONS[2]].size(1) == mask.sum().item() * 12 * n_classes


def test_fine_texts_link_to_their_coarse_parent():
    parent = fine_to_coarse(2)
    assert parent[:12].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert parent[12:].tolist() == [4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7]


# --- HTCL and slide logits -------------------------------------------------------------------------------------


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_htcl_equals_hand_computed_value():
    # class 0: fine texts of every coarse text at angles +-0.3 and 0 -> anchor direction (1, 0); coarse = (1, 0)
    # class 1: fine texts around (0.6, 0.8) -> anchor (0.6, 0.8); coarse = (0, 1)
    # pos: 1 (class 0), 0.8 (class 1); neg: cos((1,0), (.6,.8)) = 0.6 for both classes
    a1 = math.atan2(0.8, 0.6)
    fine0 = [_unit(0.3), _unit(-0.3), _unit(0.0)] * 4
    fine1 = [_unit(a1 + 0.2), _unit(a1 - 0.2), _unit(a1)] * 4
    t20 = torch.tensor(fine0 + fine1)
    t5 = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    nls = lambda z: -math.log(1 / (1 + math.exp(-z)))  # noqa: E731
    with_neg = (nls(1 - 0.6) + nls(0.8 - 0.6)) / 2  # 0.555577
    without = (nls(1.0) + nls(0.8)) / 2  # 0.342181
    assert htcl_loss(t5, t20, 2, negatives=True).item() == pytest.approx(with_neg, abs=1e-6)
    assert htcl_loss(t5, t20, 2, negatives=False).item() == pytest.approx(without, abs=1e-6)
    assert with_neg == pytest.approx(0.555577, abs=1e-6)


def test_topk_class_scores_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one text per class
    # text 0 sims [1, 0, .6] -> top-2 mean .8; text 1 sims [0, 1, .8] -> .9
    assert topk_class_scores(images, texts, 2, k=2).tolist() == pytest.approx([0.8, 0.9])
    # k larger than the bag takes all patches
    assert topk_class_scores(images, texts, 2, k=100).tolist() == pytest.approx([1.6 / 3, 1.8 / 3])


def test_logit_scale_modes():
    assert score_scale(100.0, "exp") == 100.0
    assert score_scale(100.0, "raw") == pytest.approx(math.log(100.0))  # ~4.6, the reference code's factor
    x5, x20, mask = random_slide()
    texts = torch.randn(32, D)
    torch.manual_seed(0)
    m_exp = HiveMIL(D, 2, 100.0, HiveMILConfig(logit_scale="exp")).eval()
    m_raw = HiveMIL(D, 2, 100.0, HiveMILConfig(logit_scale="raw")).eval()
    m_raw.load_state_dict(m_exp.state_dict())
    out_exp, out_raw = m_exp(x5, x20, mask, texts), m_raw(x5, x20, mask, texts)
    assert torch.allclose(out_exp.logits / 100.0, out_raw.logits / math.log(100.0), atol=1e-5)


def test_filter_at_eval_switch():
    x5, x20, mask = random_slide(n5=10)
    texts = torch.randn(32, D)
    torch.manual_seed(0)
    model = HiveMIL(D, 2, 100.0, HiveMILConfig(filter_at_eval=False))
    edges = lambda out: out.graph.edge_index_dict[INTRA_RELATIONS[2]].size(1)  # noqa: E731

    all_pairs = mask.sum().item() * 24
    assert edges(model.eval()(x5, x20, mask, texts)) == all_pairs  # paper: no filtering at evaluation
    assert edges(model.train()(x5, x20, mask, texts)) < all_pairs  # filtering while training
    model.config.filter_at_eval = True  # reference code: filtering at evaluation too
    assert edges(model.eval()(x5, x20, mask, texts)) < all_pairs


# --- hierarchical attention --------------------------------------------------------------------------------------


def _tiny_hierarchy():
    """3 parents, 5 children: children 0, 1 -> parent 0; child 2 -> parent 1; children 3, 4 -> parent 2."""
    parent_of = torch.tensor([0, 0, 1, 2, 2])
    child = torch.arange(5)
    return parent_of, torch.stack([child, parent_of]), torch.stack([parent_of, child])


def test_each_child_exchanges_hierarchical_messages_only_with_its_own_parent():
    torch.manual_seed(0)
    parent_of, up, down = _tiny_hierarchy()
    x5, x20 = torch.randn(3, 8), torch.randn(5, 8)
    e5, e20 = torch.randn(8), torch.randn(8)
    attn = HierarchicalAttention(8, heads=2, mode="edges")
    base_down = attn(x5, x20, down, e5, e20)
    for p in range(3):  # perturb one parent: only its own children's messages change
        x5p = x5.clone()
        x5p[p] += 1.0
        changed = (attn(x5p, x20, down, e5, e20) - base_down).abs().sum(1) > 1e-6
        assert changed.tolist() == (parent_of == p).tolist()
    up_attn = HierarchicalAttention(8, heads=2, mode="edges")
    base_up = up_attn(x20, x5, up, e20, e5)
    for c in range(5):  # perturb one child: only its parent's message changes
        x20p = x20.clone()
        x20p[c] += 1.0
        changed = (up_attn(x20p, x5, up, e20, e5) - base_up).abs().sum(1) > 1e-6
        assert changed.tolist() == [p == parent_of[c].item() for p in range(3)]
    # a child's message is exactly its parent's value projection (softmax over one parent is 1)
    assert torch.allclose(base_down, attn.lin_v(x5)[parent_of], atol=1e-6)
    # the weights of a parent sum to one over its own children
    w = up_attn.attention_weights(x20, x5, up, e20, e5)
    sums = torch.zeros(3, 2).index_add_(0, parent_of, w)
    assert torch.allclose(sums, torch.ones(3, 2))


def _layer_inputs(seed: int = 0):
    """A hand-built graph with every relation present: 3 parents, 5 children, 1 class (4 + 12 texts)."""
    g = torch.Generator().manual_seed(seed)
    parent_of, up, down = _tiny_hierarchy()
    x = {IMG5: torch.randn(3, 8, generator=g), IMG20: torch.randn(5, 8, generator=g),
         TXT5: torch.randn(4, 8, generator=g), TXT20: torch.randn(12, 8, generator=g)}
    t_child, t_parent = torch.arange(12), fine_to_coarse(1)
    i5 = torch.tensor([[0, 1, 2, 2], [0, 1, 2, 3]])  # image -> text
    i20 = torch.tensor([[0, 1, 2, 3, 4, 4], [0, 3, 6, 9, 11, 1]])
    edges = {INTRA_RELATIONS[0]: i5, INTRA_RELATIONS[1]: i5.flip(0), INTRA_RELATIONS[2]: i20,
             INTRA_RELATIONS[3]: i20.flip(0), HIER_RELATIONS[0]: up, HIER_RELATIONS[1]: down,
             HIER_RELATIONS[2]: torch.stack([t_child, t_parent]), HIER_RELATIONS[3]: torch.stack([t_parent, t_child])}
    return x, edges, parent_of


def test_layer_hierarchical_messages_follow_parents_only():
    torch.manual_seed(0)
    x, edges, parent_of = _layer_inputs()
    no_intra = {r: e for r, e in edges.items() if r in HIER_RELATIONS}  # isolate the hierarchical path
    for mode in ("edges", "dense"):
        layer = HierarchicalHeteroLayer(8, heads=2, hier_attention=mode)
        base = layer(x, no_intra)[IMG20]
        for p in range(3):
            xp = dict(x)
            xp[IMG5] = x[IMG5].clone()
            xp[IMG5][p] += 1.0
            changed = ((layer(xp, no_intra)[IMG20] - base).abs().sum(1) > 1e-6).tolist()
            if mode == "edges":
                assert changed == (parent_of == p).tolist()
            else:  # the reference code's dense attention mixes every parent into every child
                assert all(changed)


def test_dense_differs_from_edges_and_matches_a_direct_dense_computation():
    torch.manual_seed(0)
    x, edges, _ = _layer_inputs()
    edges_layer = HierarchicalHeteroLayer(8, heads=2, hier_attention="edges")
    dense_layer = HierarchicalHeteroLayer(8, heads=2, hier_attention="dense")
    dense_layer.load_state_dict(edges_layer.state_dict())
    out_edges, out_dense = edges_layer(x, edges), dense_layer(x, edges)
    assert not torch.allclose(out_edges[IMG20], out_dense[IMG20], atol=1e-4)
    # direct computation of the dense attention from 5x images to 20x images
    attn = dense_layer.attention["img5__down__img20"]
    e = dense_layer.scale_embedding
    q = (attn.lin_q(x[IMG20]) + e[1]).view(5, 2, 4)
    k = (attn.lin_k(x[IMG5]) + e[0]).view(3, 2, 4)
    v = attn.lin_v(x[IMG5]).view(3, 2, 4)
    expected = torch.zeros(5, 2, 4)
    for h in range(2):
        weights = torch.softmax(q[:, h] @ k[:, h].T / math.sqrt(4), dim=1)  # [5, 3]: every parent
        expected[:, h] = weights @ v[:, h]
    got = attn(x[IMG5], x[IMG20], None, e[0], e[1])
    assert torch.allclose(got, expected.reshape(5, 8), atol=1e-6)
    # and the dense module equals the edges module run on the complete bipartite edge list
    all_pairs = torch.cartesian_prod(torch.arange(3), torch.arange(5)).T
    edge_attn = edges_layer.attention["img5__down__img20"]
    assert torch.allclose(edge_attn(x[IMG5], x[IMG20], all_pairs, e[0], e[1]), got, atol=1e-6)
    # whole model: different logits for the same weights
    x5, x20, mask = random_slide()
    texts = torch.randn(32, D)
    m_edges = HiveMIL(D, 2, 100.0, HiveMILConfig(hier_attention="edges")).eval()
    m_dense = HiveMIL(D, 2, 100.0, HiveMILConfig(hier_attention="dense")).eval()
    m_dense.load_state_dict(m_edges.state_dict())
    assert not torch.allclose(m_edges(x5, x20, mask, texts).logits, m_dense(x5, x20, mask, texts).logits)


# In `edges` mode each 20x node has exactly one parent, so the softmax of the parent -> child relations is over a
# single edge and is 1 whatever the query and key: those two projections are inert (they act in `dense` mode).
INERT_IN_EDGES_MODE = {
    f"gnn.layers.{i}.attention.{rel}.{lin}.weight"
    for i in range(2)
    for rel in ("img5__down__img20", "txt5__down__txt20")
    for lin in ("lin_q", "lin_k")
}


@pytest.mark.parametrize("mode", ["edges", "dense"])
def test_gradient_reaches_every_graph_module(mode):
    torch.manual_seed(0)
    x5, x20, mask = random_slide(n5=8)
    texts = torch.randn(32, D, requires_grad=True)
    model = HiveMIL(D, 2, 100.0, HiveMILConfig(hier_attention=mode)).train()
    out = model(x5, x20, mask, texts)
    model.loss(out, torch.tensor(1)).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0}
    assert no_grad == (INERT_IN_EDGES_MODE if mode == "edges" else set())
    graph_modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (SAGEConv, HierarchicalAttention,
                                                                              HierarchicalHeteroLayer))]
    assert len(graph_modules) == 2 * (1 + len(INTRA_RELATIONS) + len(HIER_RELATIONS))
    for name, module in graph_modules:  # every convolution, attention and layer learns
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert texts.grad.abs().sum() > 0


def test_graph_output_rows_are_unit_length_and_reprs():
    x, edges, _ = _layer_inputs()
    gnn = HierarchicalHeteroGNN(8, num_layers=2, heads=2)
    out = gnn(x, edges)
    for t in (IMG5, IMG20, TXT5, TXT20):
        assert out[t].shape == x[t].shape
        assert torch.allclose(out[t].norm(dim=-1), torch.ones(len(x[t])), atol=1e-5)
    assert str(gnn) == "HierarchicalHeteroGNN(8, num_layers=2, heads=2, hier_attention=edges)"
    assert str(HierarchicalAttention(8, 2, "dense")) == "HierarchicalAttention(8, heads=2, mode=dense)"
    assert str(HierarchicalHeteroLayer(8)) == "HierarchicalHeteroLayer(8, heads=2, hier_attention=edges)"
    assert str(ABMIL(8, 3, "20x")) == "ABMIL(8, 3, scale=20x, hidden=256, attention_dim=128, dropout=0.25)"
    assert str(HiveMIL(8, 2, 100.0)) == (
        "HiveMIL(8, n_classes=2, hier_attention=edges, htcl_negatives=True, logit_scale=exp, filter_at_eval=False)"
    )


def test_bad_options_raise_naming_the_class():
    with pytest.raises(ValueError, match="HierarchicalAttention.*divisible"):
        HierarchicalAttention(7, heads=2)
    with pytest.raises(ValueError, match="HierarchicalHeteroGNN.*hier_attention"):
        HierarchicalHeteroGNN(8, hier_attention="sparse")
    with pytest.raises(ValueError, match="logit_scale"):
        HiveMILConfig(logit_scale="log")
    with pytest.raises(ValueError, match="ABMIL.*scale"):
        ABMIL(8, 2, scale="10x")


def test_node_permutation_does_not_change_slide_logits():
    torch.manual_seed(0)
    x5, x20, mask = random_slide(n5=7)
    texts = torch.randn(32, D)
    model = HiveMIL(D, 2, 100.0).eval()
    perm = torch.randperm(7)
    a = model(x5, x20, mask, texts).logits
    b = model(x5[perm], x20[perm], mask[perm], texts).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_abmil_and_zeroshot_shapes():
    x5, x20, mask = random_slide(n5=5)
    out = ABMIL(D, 3, "20x").eval()(x5, x20, mask)
    assert out.logits.shape == (3,) and out.attention.shape == (mask.sum().item(),)
    assert torch.isclose(out.attention.sum(), torch.tensor(1.0))
    zs = ZeroShotClassifier(torch.randn(48, D), 3, 100.0)
    assert zs(x5, x20, mask).logits.shape == (3,)
    assert not list(zs.parameters())


# --- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_by_hand():
    from pipeline.metrics import binary_auc, macro_f1, roc_auc

    # positives score .9, .4; negatives .5, .1: pairs (pos > neg) = (.9>.5, .9>.1, .4>.1) = 3 of 4
    assert binary_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert binary_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # a tie counts one half
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    # one-vs-rest: class 0 AUC 2/3 (.8 > .2,.1 but .6 ranks above .2,.1 too: 2 of 3 pairs) ... computed below
    ovr = [binary_auc(y == c, probs[:, c]) for c in range(3)]
    assert roc_auc(y, probs) == pytest.approx(np.mean(ovr))
    assert ovr[1] == 1.0
    # predictions [0, 1, 2, 0]: F1 class0 = 2/(2+1) = .667, class1 = 1, class2 = 2/(2+1) = .667
    assert macro_f1(y, probs.argmax(1)) == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)


# --- prompt learner on the real tiny backbone --------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone():
    from pipeline.features import create_backbone

    return create_backbone("tiny", weights="random", embed_dim=32)


def test_gradient_reaches_the_prompt_context(backbone):
    from pipeline.model.prompt_learner import PromptLearner

    texts = [f"term {i}: explanation number {i}" for i in range(32)]
    learner = PromptLearner(backbone, texts, n_ctx=4)
    assert list(learner.state_dict()) == ["ctx"]  # the frozen backbone stays out of checkpoints
    model = HiveMIL(backbone.embed_dim, 2, backbone.logit_scale, text_encoder=learner).train()
    x5, x20, mask = random_slide(dim=backbone.embed_dim)
    model.loss(model(x5, x20, mask), torch.tensor(0)).backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.model.parameters())
    # the context occupies the placeholder slots: with the placeholders' own embeddings it is the plain encoder
    with torch.no_grad():
        learner.ctx.copy_(backbone.token_embedding(learner.tokens)[0, 1:5])
        assert torch.allclose(learner(), backbone.encode_text(learner.tokens), atol=1e-5)


# --- training loop on feature files ------------------------------------------------------------------------------

def feature_files(root, backbone_name="tiny"):
    from pipeline.training.data import pair_feature_files

    feats = root / "features"
    return pair_feature_files(sorted((feats / f"{backbone_name}_5x").glob("*.h5")),
                              sorted((feats / f"hierarchical_{backbone_name}_5x_20x").glob("*.h5")))


def synthetic_task(root):
    from pipeline.training.tasks import load_task

    return load_task("classification", "synthetic", root / "dataset.csv", root / "prompts.json")


#: the small methods' settings of these tests (config.yaml's `train.method_settings`)
SMALL_SETTINGS = {"hivemil": {"n_ctx": 4, "top_k_20x": 8}, "zeroshot": {"top_k_20x": 8},
                  "abmil_5x": {"hidden": 32}, "abmil_20x": {"hidden": 32}}


def run_train(root, backbone, out, methods=("hivemil", "abmil_5x", "abmil_20x", "zeroshot"), hivemil=None, **cfg):
    """Every method through the registry into out/{method}/, then the run's results.csv and comparison.md;
    `hivemil`: settings of HiVE-MIL beyond the small ones."""
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import train_task

    base = dict(epochs=3, patience=3, lr=1e-3, device="cpu")
    base.update(cfg)
    settings = {**SMALL_SETTINGS, "hivemil": {**SMALL_SETTINGS["hivemil"], **(hivemil or {})}}
    return train_task(
        methods=list(methods), task=synthetic_task(root), split_files=sorted((root / "splits" / "synthetic_4").glob("splits_*.csv")),
        features=feature_files(root), backbone_name="tiny", shots=4, out_dir=out, backbone=backbone,
        config=TrainConfig(**base), method_settings=settings,
    )


def all_predictions(out):
    return pd.concat([pd.read_csv(p) for p in sorted(out.glob("*/predictions.csv"))], ignore_index=True)


def test_synthetic_separable_task_trains_to_high_auc(tmp_path, backbone):
    root = write_classification_cohort(tmp_path, n_train=4, n_val=3, n_test=8)
    summary = run_train(root, backbone, tmp_path / "out", methods=["hivemil"], epochs=8, patience=4)
    row = summary.iloc[0]
    assert row["auc"] >= 0.95, summary
    assert row["acc"] >= 0.8


def test_same_seed_gives_identical_metrics(tmp_path, backbone):
    root = write_classification_cohort(tmp_path, n_train=2, n_val=1, n_test=3, signal=0.3)
    a = run_train(root, backbone, tmp_path / "a", methods=["hivemil", "abmil_5x"], epochs=2)
    b = run_train(root, backbone, tmp_path / "b", methods=["hivemil", "abmil_5x"], epochs=2)
    pd.testing.assert_frame_equal(a, b)
    pa, pb = all_predictions(tmp_path / "a"), all_predictions(tmp_path / "b")
    pd.testing.assert_frame_equal(pa, pb)
    run_train(root, backbone, tmp_path / "c", methods=["hivemil"], epochs=2, seed=2)
    pc = all_predictions(tmp_path / "c")
    assert not np.allclose(pc["prob_alpha"], pa[pa.method == "hivemil"]["prob_alpha"])


def test_early_stopping_restores_the_best_epoch(tmp_path, backbone):
    from pipeline.training.config import TrainConfig
    from pipeline.training.data import load_slide
    from pipeline.training.loop import evaluate, fit, seed_everything
    from pipeline.training.methods import get_method
    from pipeline.training.methods.base import Resources

    root = write_classification_cohort(tmp_path, n_train=3, n_val=3, n_test=1, signal=0.4)
    files = feature_files(root)
    train = [(load_slide(s, files[s]), k) for k, c in enumerate(CLASSES) for s in (f"train-{c}-{i}" for i in range(3))]
    val = [(load_slide(s, files[s]), k) for k, c in enumerate(CLASSES) for s in (f"val-{c}-{i}" for i in range(3))]
    cfg = TrainConfig(epochs=12, patience=3, lr=1e-2, device="cpu")
    method = get_method("hivemil")(cfg, synthetic_task(root), SMALL_SETTINGS["hivemil"])
    assert method.task.texts == [t for cls in prompt_json().values() for t in (f"{k}: {v}" for k, v in cls.items())]
    seed_everything(cfg.seed)
    cpu = torch.device("cpu")
    model = method.build(Resources(embed_dim=backbone.embed_dim, device=cpu, backbone_factory=lambda: backbone))
    result = fit(method, model, train, val, cfg, cpu)
    keys = [(h["val_error"], h["val_loss"]) for h in result.history]
    best = min(range(len(keys)), key=lambda i: keys[i])
    assert result.best_epoch == best
    assert best < len(keys) - 1, "the scenario must move past its best epoch"
    # stopping follows the error alone: `patience` epochs after the first epoch reaching the lowest error
    errors = [h["val_error"] for h in result.history]
    first_lowest = errors.index(min(errors))
    assert len(result.history) == min(cfg.epochs, first_lowest + cfg.patience + 1)
    ev = evaluate(method, model, [b for b, _ in val], [y for _, y in val], cpu)
    assert ev.loss == pytest.approx(result.history[best]["val_loss"], rel=1e-5)
    assert ev.loss != pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_hivemil_layout_trains_end_to_end_with_all_methods(tmp_path, backbone):
    from pipeline.formats import read_hierarchical
    from pipeline.model.prompt_learner import FixedTexts
    from pipeline.training.checkpoints import CheckpointError, load_checkpoint, restore_model

    root = write_classification_cohort(tmp_path, n_train=2, n_val=1, n_test=3, hive_layout=True)
    assert read_hierarchical(root / "features" / "hierarchical_tiny_5x_20x" / "train-alpha-0.h5")[2] is None
    out = tmp_path / "results" / "synthetic" / "tiny" / "4shot"
    summary = run_train(root, backbone, out, epochs=2)
    assert sorted(summary["method"]) == sorted(["hivemil", "abmil_5x", "abmil_20x", "zeroshot"])
    assert set(summary["task"]) == {"synthetic"} and set(summary["backbone"]) == {"tiny"} and set(summary["shots"]) == {4}
    results = pd.read_csv(out / "results.csv")
    assert set(results["stat"]) == {"mean", "std"} and {"acc", "auc", "f1", "backbone", "shots"} <= set(results.columns)
    preds = all_predictions(out)
    assert len(preds) == 4 * 6 and {"slide_id", "label", "pred", "prob_alpha", "prob_beta"} <= set(preds.columns)
    assert np.allclose(preds[["prob_alpha", "prob_beta"]].sum(axis=1), 1.0)
    assert "| hivemil |" in (out / "comparison.md").read_text()
    for png in ("hivemil/plots/curves_fold0.png", "abmil_20x/plots/curves_fold0.png", "hivemil/plots/roc_hivemil.png",
                "zeroshot/plots/roc_zeroshot.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    ckpt = load_checkpoint(out / "hivemil" / "checkpoints" / "fold0.pt", backbone="tiny", classes=list(CLASSES))
    assert not any(k.startswith("text_encoder.backbone") for k in ckpt["state_dict"])
    assert ckpt["text_features"].shape == (32, backbone.embed_dim) and ckpt["task_type"] == "classification"
    model = restore_model(ckpt, torch.device("cpu"))  # no backbone: the learned prompts' features are stored
    assert isinstance(model, HiveMIL) and model.config.hier_attention == "edges"
    assert isinstance(model.text_encoder, FixedTexts)
    with pytest.raises(CheckpointError, match="backbone 'tiny'.*not 'conch'"):
        load_checkpoint(out / "hivemil" / "checkpoints" / "fold0.pt", backbone="conch")
    with pytest.raises(CheckpointError, match="classes"):
        load_checkpoint(out / "abmil_5x" / "checkpoints" / "fold0.pt", classes=["beta", "alpha"])
    # prediction on slides without labels: ensemble of the fold checkpoints, tables, heatmaps over a real file
    # opened with the mpp its patch file records
    from pipeline.demo import make_demo_slide
    from pipeline.formats import PatchGrid, write_patches
    from pipeline.training.predict import PredictOutputs, SlideFiles, predict_slides

    slide_file = tmp_path / "test-beta-0.tiff"
    make_demo_slide(slide_file, "test-beta-0", "solid", seed=3, size=2048, mpp=0.5)
    patches = tmp_path / "test-beta-0.h5"
    _, coords, _, _ = read_hierarchical(root / "features" / "hierarchical_tiny_5x_20x" / "test-beta-0.h5")
    write_patches(patches, PatchGrid(coords[:, 0], coords.reshape(-1, 2), np.repeat(np.arange(len(coords)), 16),
                                     {"mpp": 0.5, "patch_size_level0_20x": 256, "patch_size_level0_5x": 1024}))
    pred_dir = tmp_path / "predict"
    files = feature_files(root)
    # a slide without tissue (empty feature files) is listed as unscored with its reason; the others are scored
    from pipeline.formats import write_features, write_hierarchical
    from pipeline.training.data import SlideFeatures

    blank = SlideFeatures(tmp_path / "blank" / "blank_5x.h5", tmp_path / "blank" / "blank.h5")
    write_features(blank.x5, np.zeros((0, 32)), np.zeros((0, 2), np.int64), {})
    write_hierarchical(blank.hierarchical, np.zeros((0, 16, 32)), np.zeros((0, 16, 2), np.int64),
                       np.zeros((0, 16), bool), {})
    for method in ("hivemil", "abmil_5x", "zeroshot"):
        frame = predict_slides(
            checkpoints=[out / method / "checkpoints" / "fold0.pt"], backbone_name="tiny",
            outputs=PredictOutputs.in_folder(pred_dir / method),
            features={**{s: files[s] for s in ("test-alpha-0", "test-beta-0")}, "blank": blank},
            slide_files={"test-beta-0": SlideFiles(slide_file, patches)}, top_n=3, device="cpu",
        )
        assert list(frame["slide_id"]) == ["test-alpha-0", "test-beta-0"]
        unscored = pd.read_csv(pred_dir / method / "unscored.csv")
        assert list(unscored["slide_id"]) == ["blank"] and "no patches" in unscored["reason"][0]
        trained = preds[(preds.method == method) & preds.slide_id.isin(frame.slide_id)].set_index("slide_id")
        assert np.allclose(frame.set_index("slide_id").loc[trained.index, "prob_beta"], trained["prob_beta"], atol=1e-5)
    # every method writes the same interpretability files: top patches, a QuPath overlay, readable heatmaps
    table = pd.read_csv(pred_dir / "hivemil" / "top_patches" / "test-beta-0.csv")
    hive = pd.read_csv(pred_dir / "hivemil" / "predictions.csv").set_index("slide_id")
    predicted = hive.loc["test-beta-0", "pred"]
    assert set(table["scale"]) == {"5x", "20x"} and table.groupby("map").size().le(3).all()
    assert table["map"].str.startswith(predicted).all()  # HiVE-MIL's maps are the predicted class's texts
    for _, part in table.groupby(["scale", "map"]):
        assert (np.diff(part["score"]) <= 0).all()
    for method in ("hivemil", "abmil_5x", "zeroshot"):
        assert (pred_dir / method / "top_patches" / "test-alpha-0.csv").exists()
        assert (pred_dir / method / "overlays" / "test-beta-0.geojson").exists()
        assert (pred_dir / method / "heatmaps" / "test-beta-0_5x.png").read_bytes()[:4] == b"\x89PNG"
        assert not (pred_dir / method / "heatmaps" / "test-alpha-0_5x.png").exists()  # no slide file given
    assert (pred_dir / "hivemil" / "heatmaps" / "test-beta-0_20x.png").exists()
    assert sorted(p.name for p in (pred_dir / "hivemil" / "gallery").iterdir()) == [
        "test-beta-0_20x.png", "test-beta-0_5x.png"]  # the report's small copies (first slides with files)
    assert not (pred_dir / "abmil_5x" / "heatmaps" / "test-beta-0_20x.png").exists()  # reads 5x only


def test_registry_move_keeps_the_pinned_metrics(tmp_path, backbone):
    """The metrics and test probabilities of every method equal those of the pre-registry trainer (same seed)."""
    pinned = json.loads((Path(__file__).parent / "data" / "pinned_training_metrics.json").read_text())
    root = write_classification_cohort(tmp_path, n_train=3, n_val=2, n_test=4, signal=0.6, seed=5)
    summary = run_train(root, backbone, tmp_path / "out", epochs=4, patience=3)
    got = summary[["method", "fold", "acc", "auc", "f1", "best_epoch", "epochs_run"]].to_dict(orient="records")
    key = lambda r: r["method"]  # noqa: E731
    for want, row in zip(sorted(pinned["summary"], key=key), sorted(got, key=key)):
        assert want["method"] == row["method"] and want["best_epoch"] == row["best_epoch"], (want, row)
        assert want["epochs_run"] == row["epochs_run"]
        for m in ("acc", "auc", "f1"):
            assert row[m] == pytest.approx(want[m], abs=1e-9), (m, want, row)
    preds = all_predictions(tmp_path / "out")
    probs = {f"{r.method}/{r.slide_id}": r.prob_beta for r in preds.itertuples()}
    assert probs.keys() == pinned["prob_beta"].keys()
    for k, v in pinned["prob_beta"].items():
        assert probs[k] == pytest.approx(v, abs=2e-6), k


def test_cli_choices_and_defaults_come_from_the_registry_and_config():
    import argparse

    from pipeline.commands import train as train_cmd
    from pipeline.model.options import BEST_EPOCH_MODES
    from pipeline.training.config import TrainConfig
    from pipeline.training.methods import list_methods

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert list(actions["method"].choices) == list_methods()
    assert {"hivemil", "abmil_5x", "abmil_20x", "zeroshot"} <= set(list_methods("classification"))
    assert tuple(actions["best_epoch"].choices) == BEST_EPOCH_MODES
    defaults = TrainConfig().to_dict()
    assert {k: actions[k].default for k in defaults} == defaults


def test_registering_a_method_twice_or_with_unknown_inputs_fails():
    from pipeline.training.methods.base import Method
    from pipeline.training.registry import register_method

    with pytest.raises(ValueError, match="registered twice"):
        register_method("hivemil", task_types=("classification",), inputs=("5x",), summary="")(type("X", (Method,), {}))
    with pytest.raises(ValueError, match="unknown input"):
        register_method("new", task_types=("classification",), inputs=("pixels",), summary="")


def test_config_train_section_round_trips_through_the_cli_flags():
    import argparse
    import shlex
    from pathlib import Path

    import yaml

    from pipeline.commands import train as train_cmd
    from pipeline.settings import parse_assignments
    from pipeline.training.methods import method_settings
    from pipeline.wiring.cohort import method_settings as checked_settings
    from pipeline.wiring.flags import method_settings_flags, train_flags

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    section = {**config["train"], "epochs": 7, "best_epoch": "first",
               "method_settings": {"hivemil": {"htcl_negatives": False, "top_k_5x": 3, "hier_attention": "dense"}}}
    config["train"] = section
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    required = "--task t --method hivemil --dataset d --splits s --prompts p --features-5x a --hierarchical b "
    required += "--backbone tiny --out-dir o"
    flags = train_flags(section) + " " + method_settings_flags(checked_settings(config)["hivemil"])
    args = parser.parse_args(shlex.split(required) + shlex.split(flags))
    assert args.epochs == 7 and args.lr == section["lr"] and args.best_epoch == "first"
    settings = method_settings("hivemil", parse_assignments(args.method_settings, "test"))
    assert settings.htcl_negatives is False and settings.hier_attention == "dense" and settings.top_k_5x == 3
    assert settings.top_k_20x == 100  # a setting left out keeps its default
    assert "abmil_5x" not in checked_settings(config)  # other methods' jobs do not see HiVE-MIL's settings


def test_zeroshot_reads_the_text_embeddings_file_and_refuses_other_prompts(tmp_path, backbone):
    """text_{task}.h5 is what zero-shot scores with: its buffers are the file's rows, and a file of other
    prompts is refused by name."""
    from pipeline.features.text import embed_prompts
    from pipeline.training.checkpoints import load_checkpoint
    from pipeline.training.config import TrainConfig
    from pipeline.training.run import train_method

    root = write_classification_cohort(tmp_path, n_train=2, n_val=1, n_test=2)
    text_h5 = tmp_path / "text_synthetic.h5"
    emb = embed_prompts(root / "prompts.json", text_h5, backbone, device="cpu")
    kwargs = dict(task=synthetic_task(root), method="zeroshot", backbone_name="tiny", shots=2,
                  split_files=[root / "splits" / "synthetic_4" / "splits_0.csv"], features=feature_files(root),
                  config=TrainConfig(device="cpu"), settings={"top_k_20x": 8})
    train_method(out_dir=tmp_path / "zs", text_embeddings=text_h5, **kwargs)  # no backbone given: none is built
    ckpt = load_checkpoint(tmp_path / "zs" / "checkpoints" / "fold0.pt")
    coarse = torch.nn.functional.normalize(torch.from_numpy(emb.embeddings[:, :4].reshape(8, -1)), dim=-1)
    assert torch.allclose(ckpt["state_dict"]["t5"], coarse, atol=1e-6)
    other = json.loads((root / "prompts.json").read_text())
    other["alpha"] = {f"other {k}": v for k, v in other["alpha"].items()}
    (tmp_path / "other.json").write_text(json.dumps(other))
    embed_prompts(tmp_path / "other.json", tmp_path / "other.h5", backbone, device="cpu")
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="other prompts"):
        train_method(out_dir=tmp_path / "zs2", text_embeddings=tmp_path / "other.h5", **kwargs)


def test_prediction_and_evaluation_encode_each_models_texts_once(tmp_path, backbone):
    """Texts do not depend on the slide: evaluation runs the prompt learner once per pass, prediction reads each
    fold model's stored texts once (2 models x 6 slides: 2 reads, not 12 or 24)."""
    from collections import Counter

    from pipeline.model.prompt_learner import FixedTexts, PromptLearner
    from pipeline.training.checkpoints import save_checkpoint
    from pipeline.training.config import TrainConfig
    from pipeline.training.data import load_slide
    from pipeline.training.loop import evaluate
    from pipeline.training.methods import get_method
    from pipeline.training.methods.base import Resources
    from pipeline.training.predict import PredictOutputs, predict_slides

    root = write_classification_cohort(tmp_path, n_train=1, n_val=1, n_test=3)
    files = feature_files(root)
    slides = [s for s in files if s.startswith("test-")]
    method = get_method("hivemil")(TrainConfig(device="cpu"), synthetic_task(root), SMALL_SETTINGS["hivemil"])
    cpu = torch.device("cpu")
    checkpoints = []
    for fold in range(2):
        torch.manual_seed(fold)
        model = method.build(Resources(embed_dim=backbone.embed_dim, device=cpu, backbone_factory=lambda: backbone))
        checkpoints.append(tmp_path / f"fold{fold}.pt")
        save_checkpoint(checkpoints[-1], method, model, "tiny", backbone.embed_dim, backbone.logit_scale, {})
    calls: Counter = Counter()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.update([type(module)]) if isinstance(module, (PromptLearner, FixedTexts))
        else None)
    try:
        evaluate(method, model, [load_slide(s, files[s]) for s in slides], None, cpu)
        assert calls == Counter({PromptLearner: 1})
        calls.clear()
        frame = predict_slides(checkpoints=checkpoints, features={s: files[s] for s in slides}, backbone_name="tiny",
                               outputs=PredictOutputs.in_folder(tmp_path / "predict"), top_n=2, device="cpu")
    finally:
        hook.remove()
    assert len(frame) == len(slides) == 6 and set(frame["n_models"]) == {2}
    assert calls == Counter({FixedTexts: 2})


def test_summarize_command_writes_exactly_the_files_it_is_given(tmp_path):
    """The four tables of a run go where the workflow names them (here not its layout), and nowhere else."""
    from pipeline.cli import main

    summaries = []
    for method, acc in (("hivemil", (0.8, 0.6)), ("abmil_5x", (0.5, 0.7))):
        path = tmp_path / "in" / f"{method}.csv"
        path.parent.mkdir(exist_ok=True)
        pd.DataFrame({"task": "t", "backbone": "tiny", "shots": 4, "method": method, "fold": [0, 1], "acc": acc,
                      "auc": acc, "f1": acc}).to_csv(path, index=False)
        summaries.append(str(path))
    out = tmp_path / "mine"
    named = {"--results": out / "r.csv", "--comparison": out / "md" / "c.md", "--comparison-csv": out / "c.csv",
             "--summary": out / "all" / "s.csv"}
    assert main(["summarize", "--summaries", *summaries, "--title", "t/tiny/4shot",
                 *(str(v) for kv in named.items() for v in kv)]) == 0
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(named.values())
    results = pd.read_csv(out / "r.csv").set_index(["method", "stat"])
    assert results.loc[("hivemil", "mean"), "acc"] == pytest.approx(0.7)
    assert len(pd.read_csv(out / "all" / "s.csv")) == 4 and len(pd.read_csv(out / "c.csv")) == 2
    assert (out / "md" / "c.md").read_text().startswith("# t/tiny/4shot")


def test_predict_command_writes_exactly_the_files_it_is_given(tmp_path, backbone):
    """The workflow names every output of prediction (here in a layout of its own): the two tables where --predictions
    and --unscored say, each slide's files in the four folders given, and nothing anywhere else."""
    from pipeline.cli import main
    from pipeline.demo import make_demo_slide
    from pipeline.formats import PatchGrid, read_hierarchical, write_patches
    from pipeline.training.checkpoints import save_checkpoint
    from pipeline.training.config import TrainConfig
    from pipeline.training.methods import get_method
    from pipeline.training.methods.base import Resources

    root = write_classification_cohort(tmp_path / "cohort", n_train=1, n_val=1, n_test=1)
    files = {s: f for s, f in feature_files(root).items() if s.startswith("test-")}
    method = get_method("abmil_5x")(TrainConfig(device="cpu"), synthetic_task(root))
    model = method.build(Resources(embed_dim=backbone.embed_dim, device=torch.device("cpu"),
                                   backbone_factory=lambda: backbone))
    ckpt = tmp_path / "fold0.pt"
    save_checkpoint(ckpt, method, model, "tiny", backbone.embed_dim, backbone.logit_scale, {})
    slide_file = tmp_path / "slides" / "test-beta-0.tiff"
    slide_file.parent.mkdir()
    make_demo_slide(slide_file, "test-beta-0", "solid", seed=3, size=1024, mpp=0.5)
    patches = tmp_path / "patches" / "test-beta-0.h5"
    _, coords, _, _ = read_hierarchical(files["test-beta-0"].hierarchical)
    write_patches(patches, PatchGrid(coords[:, 0], coords.reshape(-1, 2), np.repeat(np.arange(len(coords)), 16),
                                     {"mpp": 0.5, "patch_size_level0_20x": 256, "patch_size_level0_5x": 1024}))
    out = tmp_path / "mine"
    named = {"--predictions": out / "p.csv", "--unscored": out / "tables" / "u.csv", "--top-patches": out / "tops",
             "--overlays": out / "qupath", "--heatmaps": out / "maps", "--gallery": out / "report" / "small"}
    args = ["predict", "--checkpoints", str(ckpt), "--backbone", "tiny", "--device", "cpu", "--heatmap-px", "300",
            "--features-5x", *(str(f.x5) for f in files.values()),
            "--hierarchical", *(str(f.hierarchical) for f in files.values()),
            "--slides", str(slide_file), "--patches", str(patches)]
    assert main(args + [str(v) for kv in named.items() for v in kv]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(["p.csv", "tables/u.csv", "tops/test-alpha-0.csv", "tops/test-beta-0.csv",
                              "qupath/test-beta-0.geojson", "maps/test-beta-0_5x.png",
                              "report/small/test-beta-0_5x.png"]), written
    assert sorted(pd.read_csv(out / "p.csv")["slide_id"]) == ["test-alpha-0", "test-beta-0"]
    # without slide and patch files, every folder still exists (a Snakemake directory output), empty
    assert main([a for a in args if a not in ("--slides", "--patches", str(slide_file), str(patches))]
                + [str(v) for kv in {**named, "--predictions": tmp_path / "b" / "p.csv", "--heatmaps": tmp_path / "hm",
                                     "--gallery": tmp_path / "g"}.items() for v in kv]) == 0
    assert (tmp_path / "hm").is_dir() and not any((tmp_path / "hm").iterdir()) and (tmp_path / "g").is_dir()


def test_reference_preset_trains_checkpoints_and_restores(tmp_path, backbone):
    """`reference: true` through the whole loop: the checkpoint rebuilds the reference model (shared attention
    block, raw inputs, padded children) and gives the test predictions again."""
    from pipeline.training.checkpoints import load_checkpoint, restore_model
    from pipeline.training.data import load_slide

    root = write_classification_cohort(tmp_path, n_train=2, n_val=1, n_test=2, signal=0.5)
    out = tmp_path / "out"
    run_train(root, backbone, out, methods=["hivemil"], epochs=2, hivemil={"reference": True})
    ckpt = load_checkpoint(out / "hivemil" / "checkpoints" / "fold0.pt")
    assert ckpt["settings"]["reference"] and ckpt["settings"]["hier_attention"] == "dense"
    model = restore_model(ckpt, torch.device("cpu"))
    assert model.config == HiveMILConfig(top_k_20x=8, reference=True)
    assert "hier_block=shared" in repr(model) and "keep_padded_children=True" in repr(model)
    files = feature_files(root)
    preds = all_predictions(out).set_index("slide_id")
    with torch.no_grad():
        for sid in preds.index:
            logits = model(*load_slide(sid, files[sid]).on(torch.device("cpu"))).logits
            assert torch.softmax(logits, 0)[1].item() == pytest.approx(preds.loc[sid, "prob_beta"], abs=1e-5)
