"""HiVE-MIL reference parity: `reference: true` computes what the public reference code computes, switch by switch.

The fixture in tests/data/hivemil_reference/ was made once by running the reference code (bryanwong17/HiVE-MIL at
the commit its fixture.json records; make_fixture.py there, which imports the reference's model file from a
checkout): seeded random raw features and text features, the reference graph's initial weights, and its logits,
HTCL, filtering masks and graph outputs. Its text branch is bypassed (both models get the same text features).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.model.graph import (
    HIER_RELATIONS,
    IMG5,
    IMG20,
    INTRA_RELATIONS,
    TXT5,
    TXT20,
    HierarchicalHeteroGNN,
    HierarchicalHeteroLayer,
    SharedHierarchicalAttention,
    relation_key,
)
from pipeline.model.hivemil import HiveMIL, HiveMILConfig, build_slide_graph, fine_to_coarse, tgdf_keep
from pipeline.model.hivemil_reference import load_reference_graph
from pipeline.model.options import REFERENCE_SWITCHES
from pipeline.training.config import TrainConfig
from pipeline.training.loop import EarlyStopping

FIXTURE = Path(__file__).parent / "data" / "hivemil_reference"
ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE / "fixture.pt", weights_only=True)


def reference_model(fixture: dict, config: HiveMILConfig) -> HiveMIL:
    meta = json.loads((FIXTURE / "fixture.json").read_text())
    model = HiveMIL(meta["dim"], meta["classes"], math.exp(float(fixture["logit_scale_theta"])), config)
    load_reference_graph(model.gnn, fixture["reference_state"])
    return model


def run(model: HiveMIL, fixture: dict) -> dict[str, torch.Tensor]:
    """Our outputs in the fixture's terms: logits, HTCL, the kept image-text entries at both scales, graph nodes."""
    inp = fixture["inputs"]
    with torch.no_grad():
        out = model(inp["x5"], inp["x20"], inp["mask"], inp["texts"])
    g = out.graph
    n_text5, n_text20 = g.x_dict[TXT5].size(0), g.x_dict[TXT20].size(0)
    keep5 = torch.zeros(g.x_dict[IMG5].size(0), n_text5, dtype=torch.bool)
    keep5[tuple(g.edge_index_dict[INTRA_RELATIONS[0]])] = True
    keep20 = torch.zeros(g.x_dict[IMG20].size(0), n_text20, dtype=torch.bool)
    keep20[tuple(g.edge_index_dict[INTRA_RELATIONS[2]])] = True
    return {"logits": out.logits, "htcl": out.htcl, "keep5": keep5, "matched5": g.matched_5x, "keep20": keep20,
            **{t: out.nodes[t] for t in (IMG5, TXT5, IMG20, TXT20)}}


def matches(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, bool]:
    return {k: ours[k].shape == theirs[k].shape and (torch.equal(ours[k], theirs[k]) if theirs[k].dtype == torch.bool
                                                     else torch.allclose(ours[k], theirs[k], atol=ATOL, rtol=0))
            for k in theirs}


def test_the_fixture_exercises_filtering_and_zero_padded_children(fixture):
    meta = json.loads((FIXTURE / "fixture.json").read_text())
    assert meta["reference_repo"].endswith("bryanwong17/HiVE-MIL") and len(meta["reference_commit"]) == 40
    out, mask = fixture["outputs"], fixture["inputs"]["mask"]
    matched = out["matched5"]
    assert 0 < (~matched).sum() < len(matched)  # some parents filtered out
    padded = ~mask[matched].reshape(-1)  # the reference's 20x nodes: all 16 slots of each kept parent
    assert padded.any() and out["keep20"][padded].any()  # zero-padded children, some with text edges
    assert out["keep20"].size(0) == 16 * matched.sum() > 100  # more 20x nodes than the top-k of 100


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reference_preset_reproduces_the_reference_code_on_identical_tensors(fixture, mode):
    model = reference_model(fixture, HiveMILConfig(reference=True))
    ours = run(model.train(mode == "train"), fixture)
    assert matches(ours, fixture["outputs"]) == dict.fromkeys(fixture["outputs"], True)
    assert torch.allclose(ours["logits"], fixture["outputs"]["logits"], atol=ATOL, rtol=0)  # the numbers, once more


@pytest.mark.parametrize("switch", [s for s in REFERENCE_SWITCHES if s not in ("best_epoch", "hier_block")])
def test_every_reference_switch_is_needed_for_parity(fixture, switch):
    """Each switch moved back to its default alone breaks parity (the fixture sees every departure)."""
    config = HiveMILConfig(reference=True)
    setattr(config, switch, getattr(HiveMILConfig(), switch))
    got = matches(run(reference_model(fixture, config).eval(), fixture), fixture["outputs"])
    assert not all(got.values()), switch
    if switch == "filter_std":  # the smallest departure: a few 20x decisions, logits beyond the tolerance
        assert not got["keep20"] and not got["logits"] and got["keep5"]


def test_reference_weights_fill_the_shared_block_exactly_and_refuse_ours(fixture):
    state = fixture["reference_state"]
    model = reference_model(fixture, HiveMILConfig(reference=True))
    assert sum(p.numel() for p in model.gnn.parameters()) == sum(v.numel() for v in state.values())
    whole = {f"custom_vlm.graph_prompt_learner.{k}": v for k, v in state.items()}  # a reference checkpoint's keys
    other = HiveMIL(model.embed_dim, model.n_classes, 100.0, HiveMILConfig(reference=True))
    load_reference_graph(other.gnn, whole)
    assert all(torch.equal(a, b) for a, b in zip(model.gnn.state_dict().values(), other.gnn.state_dict().values()))
    with pytest.raises(ValueError, match="hier_block='shared'"):
        load_reference_graph(HiveMIL(model.embed_dim, model.n_classes, 100.0).gnn, state)
    with pytest.raises(KeyError, match="in_proj_bias"):
        load_reference_graph(other.gnn, {k: v for k, v in state.items() if not k.endswith("in_proj_bias")})


def test_reference_preset_sets_every_switch_and_the_defaults_stay_the_papers():
    """`reference: true` in HiVE-MIL's settings sets the eight model switches and the restored epoch (the loop's
    ninth); the defaults are the paper's."""
    from pipeline.training.methods import get_method
    from pipeline.training.tasks import get_task_type

    texts = [f"c{c} text {i}: a description" for c in range(2) for i in range(16)]
    task = get_task_type("classification")(name="t", classes=["a", "b"], targets={}, texts=texts)
    hivemil = get_method("hivemil")
    ref, paper = hivemil(TrainConfig(), task, {"reference": True}), hivemil(TrainConfig(), task)
    model_switches = {k for k in REFERENCE_SWITCHES if hasattr(HiveMILConfig(), k)}
    assert model_switches == set(REFERENCE_SWITCHES) - {"best_epoch"}  # best_epoch is the loop's
    for name in model_switches:
        value = REFERENCE_SWITCHES[name]
        assert getattr(ref.settings, name) == value and getattr(paper.settings, name) != value, name
    assert ref.best_epoch() == REFERENCE_SWITCHES["best_epoch"] != paper.best_epoch()
    preset_wins = hivemil(TrainConfig(), task, {"reference": True, "hier_attention": "edges"})
    assert preset_wins.settings.hier_attention == "dense"
    hive = HiveMILConfig(reference=True)
    assert all(getattr(hive, k) == REFERENCE_SWITCHES[k] for k in model_switches)
    assert ref.hivemil_config() == HiveMILConfig(reference=True)
    assert paper.hivemil_config() == HiveMILConfig()


def test_parameter_counts_at_width_512():
    """Ours 10.49M graph parameters; the reference's 14.70M registered, of which 10.50M run (its four 'self'
    SAGE convolutions per layer have no edges): reference mode holds exactly those."""
    ours = HierarchicalHeteroGNN(512)
    shared = HierarchicalHeteroGNN(512, hier_attention="dense", hier_block="shared")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    self_convs = 2 * 4 * (2 * 512 * 512 + 512)
    assert count(ours) == 10_491_904
    assert count(shared) == 10_504_192 and count(shared) + self_convs == 14_702_592


def _hand_graph(seed: int = 0):
    """3 parents, 5 children (0, 1 -> parent 0; 2 -> 1; 3, 4 -> 2), one class of texts, every relation present."""
    g = torch.Generator().manual_seed(seed)
    parent_of = torch.tensor([0, 0, 1, 2, 2])
    child = torch.arange(5)
    x = {IMG5: torch.randn(3, 8, generator=g), IMG20: torch.randn(5, 8, generator=g),
         TXT5: torch.randn(4, 8, generator=g), TXT20: torch.randn(12, 8, generator=g)}
    t_child, t_parent = torch.arange(12), fine_to_coarse(1)
    edges = {HIER_RELATIONS[0]: torch.stack([child, parent_of]), HIER_RELATIONS[1]: torch.stack([parent_of, child]),
             HIER_RELATIONS[2]: torch.stack([t_child, t_parent]), HIER_RELATIONS[3]: torch.stack([t_parent, t_child])}
    return x, edges, parent_of


def test_shared_block_in_edges_mode_stays_on_parent_child_edges():
    torch.manual_seed(0)
    x, edges, parent_of = _hand_graph()
    layer = HierarchicalHeteroLayer(8, heads=2, hier_attention="edges", hier_block="shared")
    base = layer(x, edges)[IMG20]
    for p in range(3):  # perturb one parent: only its own children change
        xp = {**x, IMG5: x[IMG5].clone()}
        xp[IMG5][p] += 1.0
        changed = ((layer(xp, edges)[IMG20] - base).abs().sum(1) > 1e-6).tolist()
        assert changed == (parent_of == p).tolist()
    # the update is 2h + attention (no intra edges here): with a zero attention output only 2h is left
    attn = layer.shared_attention
    assert str(attn) == "SharedHierarchicalAttention(8, relations=4, heads=2, mode=edges)"
    with torch.no_grad():
        attn.lin_out.weight.zero_()
        attn.lin_out.bias.zero_()
    assert torch.allclose(layer(x, edges)[IMG20], 2 * x[IMG20], atol=1e-6)
    # dense equals edges over the complete bipartite edge list
    dense = SharedHierarchicalAttention(8, [relation_key(r) for r in HIER_RELATIONS], heads=2, mode="dense")
    sparse = SharedHierarchicalAttention(8, [relation_key(r) for r in HIER_RELATIONS], heads=2, mode="edges")
    sparse.load_state_dict(dense.state_dict())
    e = torch.randn(2, 8)
    rel = relation_key(HIER_RELATIONS[1])
    all_pairs = torch.cartesian_prod(torch.arange(3), torch.arange(5)).T
    assert torch.allclose(dense(rel, x[IMG5], x[IMG20], None, e[0], e[1]),
                          sparse(rel, x[IMG5], x[IMG20], all_pairs, e[0], e[1]), atol=1e-6)


def test_sample_std_threshold_by_hand():
    # column [0, .5, .75, 1]: mean .5625; population std .3698 -> threshold .7474 keeps .75 and 1;
    # sample std .4270 -> threshold .7760 keeps 1 only
    sim = torch.tensor([[0.0], [0.5], [0.75], [1.0]])
    assert tgdf_keep(sim, std="population")[:, 0].tolist() == [False, False, True, True]
    assert tgdf_keep(sim, std="sample")[:, 0].tolist() == [False, False, False, True]
    assert tgdf_keep(torch.tensor([[0.3, 2.0]]), std="sample").all()  # one patch: no spread, kept (not NaN)


def test_kept_padded_children_are_zero_nodes_of_every_slot():
    g = torch.Generator().manual_seed(0)
    x5, x20 = torch.randn(5, 8, generator=g), torch.randn(5, 16, 8, generator=g) + 3.0
    mask = torch.rand(5, 16, generator=g) > 0.4
    t5, t20 = torch.randn(4, 8, generator=g), torch.randn(12, 8, generator=g)
    graph = build_slide_graph(x5, x20, mask, t5, t20, filtering=False, normalize=False, keep_padded=True)
    nodes = graph.x_dict[IMG20]
    assert nodes.size(0) == 5 * 16 and torch.equal(graph.child_slot, torch.arange(16).repeat(5))
    padded = ~mask[graph.child_parent, graph.child_slot]
    assert padded.any() and (nodes[padded] == 0).all()  # the row's content is not used: a missing child is zero
    assert torch.equal(nodes[~padded], x20[mask])  # raw features, not normalised
    dropped = build_slide_graph(x5, x20, mask, t5, t20, filtering=False)
    assert dropped.x_dict[IMG20].size(0) == mask.sum()


def test_best_epoch_lowest_loss_among_the_lowest_errors_or_the_first():
    errors, losses = [0.5, 0.25, 0.25, 0.5], [1.0, 0.9, 0.7, 0.6]
    picked = {}
    for rule in ("lowest_loss", "first"):
        stop, model = EarlyStopping(patience=5, best_epoch=rule), nn.Linear(1, 1, bias=False)
        for epoch, (err, loss) in enumerate(zip(errors, losses)):
            with torch.no_grad():
                model.weight.fill_(epoch)
            stop.step(epoch, err, loss, model)
        picked[rule] = (stop.best_epoch, float(stop.best_state["weight"]))
    assert picked == {"lowest_loss": (2, 2.0), "first": (1, 1.0)}
    with pytest.raises(ValueError, match="best_epoch"):
        EarlyStopping(3, best_epoch="last")


def test_every_parameter_of_the_reference_graph_learns(fixture):
    model = reference_model(fixture, HiveMILConfig(reference=True)).train()
    inp = fixture["inputs"]
    texts = inp["texts"].clone().requires_grad_(True)
    model.loss(model(inp["x5"], inp["x20"], inp["mask"], texts), torch.tensor(2)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    assert texts.grad.abs().sum() > 0
