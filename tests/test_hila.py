"""HiLa (pipeline.model.hila): Sinkhorn, masking, gradients, MCL, linear cost, and learning a planted risk signal."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pipeline.model.hila import (
    CrossLevelPropagation,
    HiLa,
    HiLaConfig,
    mutual_contrastive_loss,
    optimal_prompt_alignment,
    prompt_risk,
    sinkhorn_plan,
)
from pipeline.model.prompt_learner import FixedTexts

D, K = 16, 4
SMALL = HiLaConfig(hidden=8, heads=2)


class LearnableTexts(nn.Module):
    """A stand-in for a PromptLearner: the prompt features themselves are the parameter."""

    def __init__(self, k: int, dim: int):
        super().__init__()
        self.texts = nn.Parameter(torch.randn(k, dim))

    def forward(self) -> Tensor:
        return self.texts


def bag(n: int = 6, dim: int = D, seed: int = 0, p_valid: float = 0.7) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, 16, dim, generator=g), torch.rand(n, 16, generator=g) < p_valid


def model(cfg: HiLaConfig = SMALL, dim: int = D, k: int = K, seed: int = 0) -> HiLa:
    torch.manual_seed(seed)
    return HiLa(dim, 4, cfg, LearnableTexts(k, dim), LearnableTexts(k, dim))


# --- Sinkhorn and OPL ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,k", [(37, 5), (300, 8), (1, 3)])
def test_sinkhorn_meets_both_uniform_marginals_at_the_defaults(m, k):
    g = torch.Generator().manual_seed(m)
    x, t = torch.randn(m, D, generator=g), torch.randn(k, D, generator=g)
    x[: m // 2] += 3 * t[0]  # a prompt that half the instances match: a far from uniform kernel
    cost = 1 - F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T
    plan = sinkhorn_plan(cost)  # eps 0.1, 100 iterations, tol 1e-5
    assert plan.shape == (m, k) and not plan.requires_grad and bool((plan >= 0).all())
    assert torch.allclose(plan.sum(1) * m, torch.ones(m), atol=1e-3)
    assert torch.allclose(plan.sum(0) * k, torch.ones(k), atol=1e-3)
    tight = sinkhorn_plan(cost, tol=1e-7, iters=1000)
    assert torch.allclose(tight.sum(0) * k, torch.ones(k), atol=1e-4)


def test_sinkhorn_sends_mass_to_the_cheaper_prompt_and_handles_empty_sides():
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    plan = sinkhorn_plan(cost, eps=0.05)
    assert bool((plan[[0, 2], 0] > 0.2).all()) and bool((plan[[1, 3], 1] > 0.2).all())
    assert sinkhorn_plan(torch.zeros(0, 3)).shape == (0, 3)


def test_opl_scores_are_transport_weighted_cosines():
    x, t, h = torch.randn(20, D), torch.randn(K, D), torch.randn(20, 8)
    out = optimal_prompt_alignment(x, t, h)
    cos = F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T
    assert torch.allclose(out.scores, K * (out.plan * cos).sum(0), atol=1e-6)
    assert torch.allclose(out.tokens, K * out.plan.T @ h, atol=1e-6)
    assert bool((out.scores <= cos.max(0).values + 1e-6).all()) and bool((out.scores >= cos.min(0).values - 1e-6).all())
    empty = optimal_prompt_alignment(torch.zeros(0, D), t, torch.zeros(0, 8))
    assert empty.scores.shape == (K,) and empty.tokens.shape == (K, 8) and empty.plan.shape == (0, K)


# --- the model -------------------------------------------------------------------------------------------------------


def test_output_shapes_plans_and_patch_index():
    net = model().eval()
    x5, x20, mask = bag()
    out = net(x5, x20, mask)
    m = int(mask.sum())
    assert out.logits.shape == (4,) and out.aux.shape == () and out.mcl.shape == ()
    assert out.attr_weights_region.shape == (K,) and out.attr_weights_patch.shape == (K,)
    assert torch.allclose(out.attr_weights_patch.sum(), torch.tensor(1.0))
    assert out.plan_region.shape == (6, K) and out.plan_patch.shape == (m, K)
    assert torch.equal(out.patch_index, mask.flatten().nonzero().squeeze(1))
    assert torch.allclose(out.plan_patch.sum(1) * m, torch.ones(m), atol=1e-3)
    assert torch.allclose(out.plan_region.sum(0) * K, torch.ones(K), atol=1e-3)
    assert torch.isclose(out.aux, SMALL.mcl_weight * out.mcl)


def test_padding_children_do_not_change_the_output():
    net = model().eval()
    x5, x20, mask = bag()
    garbage = x20.clone()
    garbage[~mask] = 100 * torch.randn(int((~mask).sum()), D)
    clean = x20.masked_fill(~mask.unsqueeze(-1), 0.0)
    a, b = net(x5, garbage, mask), net(x5, clean, mask)
    for name in ("logits", "aux", "attr_weights_region", "attr_weights_patch", "plan_region", "plan_patch"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name


def test_a_valid_childs_features_change_the_prediction():
    net = model().eval()
    x5, x20, mask = bag()
    n, j = mask.nonzero()[0].tolist()
    changed = x20.clone()
    changed[n, j] = 5 * torch.randn(D)
    a, b = net(x5, x20, mask), net(x5, changed, mask)
    assert not torch.allclose(a.logits, b.logits)
    assert torch.allclose(a.plan_region, b.plan_region)  # the region level's OPL reads x5 only


def test_finite_for_one_region_and_for_regions_without_children():
    net = model().eval()
    x5, x20, mask = bag(n=1)
    assert torch.isfinite(net(x5, x20, mask).logits).all()
    x5, x20, mask = bag(n=5)
    mask[2] = False  # one region without children
    out = net(x5, x20, mask)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux)
    none = net(x5, x20, torch.zeros_like(mask))  # no child at all: region level only, no MCL term
    assert torch.isfinite(none.logits).all() and none.plan_patch.shape == (0, K) and none.mcl == 0


def test_a_region_without_children_gets_no_message():
    layer = CrossLevelPropagation(8, heads=2).eval()
    h5, h20 = torch.randn(3, 8), torch.randn(3, 16, 8)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[1] = False
    out5, _ = layer(h5, h20, mask)
    assert torch.allclose(out5[1], layer.norm_region(h5[1]), atol=1e-6)
    h20_other = h20.clone()
    h20_other[1] = torch.randn(16, 8)
    assert torch.allclose(layer(h5, h20_other, mask)[0], out5)


def test_gradient_reaches_the_prompt_texts_and_mcl_trains_the_tokens():
    net = model().train()
    x5, x20, mask = bag()
    out = net(x5, x20, mask)
    (out.logits.sum() + out.aux).backward()
    for encoder in (net.region_text_encoder, net.patch_text_encoder):
        assert encoder.texts.grad is not None and encoder.texts.grad.abs().sum() > 0
    net.zero_grad(set_to_none=True)
    net(x5, x20, mask).mcl.backward()
    for proj in (net.proj_region, net.proj_patch):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_mcl_is_lower_when_the_levels_agree():
    torch.manual_seed(0)
    z = torch.randn(6, 16)
    agree = mutual_contrastive_loss(z + 0.1 * torch.randn(6, 16), z)
    permuted = mutual_contrastive_loss(z[torch.tensor([1, 2, 3, 4, 5, 0])], z)
    assert agree < permuted
    other = torch.randn(6, 16)
    assert torch.isclose(mutual_contrastive_loss(z, other), mutual_contrastive_loss(other, z))  # symmetric


def test_precomputed_and_fixed_texts_give_the_same_output():
    net = model().eval()
    x5, x20, mask = bag()
    with torch.no_grad():
        texts = net.encode_texts()
        fixed = HiLa(D, 4, SMALL, FixedTexts(texts[0]), FixedTexts(texts[1])).eval()
        fixed.load_state_dict({k: v for k, v in net.state_dict().items() if "text_encoder" not in k}, strict=False)
        a, b, c = net(x5, x20, mask), net(x5, x20, mask, texts=texts), fixed(x5, x20, mask)
    assert torch.allclose(a.logits, b.logits) and torch.allclose(a.logits, c.logits)
    with pytest.raises(ValueError, match="no text encoders"):
        HiLa(D, 4, SMALL)(x5, x20, mask)
    with pytest.raises(ValueError, match="same K"):
        net(x5, x20, mask, texts=(texts[0], texts[1][:2]))


def test_config_validation_and_repr():
    with pytest.raises(ValueError, match="multiple of heads"):
        HiLaConfig(hidden=10, heads=4)
    with pytest.raises(ValueError, match="ot_eps"):
        HiLaConfig(ot_eps=0)
    assert HiLaConfig().to_dict()["ot_tol"] == 1e-5
    assert repr(model()).startswith("HiLa(16, n_bins=4, hidden=8, heads=2, clp_layers=1")


class LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_cost_is_linear_in_patches_for_4000_regions():
    n, dim = 4000, 64
    net = model(HiLaConfig(hidden=32, heads=4), dim=dim).train()
    x5, x20 = torch.randn(n, dim), torch.randn(n, 16, dim)
    mask = torch.ones(n, 16, dtype=torch.bool)
    largest = LargestTensor()
    t0 = time.perf_counter()
    with largest:
        out = net(x5, x20, mask)
    (out.logits.sum() + out.aux).backward()
    assert time.perf_counter() - t0 < 20
    assert out.plan_patch.shape == (n * 16, K) and out.plan_region.shape == (n, K)
    assert largest.numel <= n * 16 * dim < n * n  # no [N, N] (let alone [16N, N]) tensor anywhere


# --- a planted risk signal -------------------------------------------------------------------------------------------


def synthetic_cohort(n_patients: int = 150, dim: int = 64, seed: int = 0) -> dict:
    """Latent risk r ~ N(0, 1); the fraction of 20x children aligned to a direction u grows with r.

    T ~ Exp(rate e^{2r}) x 300 days, C ~ Exp(rate 0.5) x 300 days, event = T <= C; 4 bins at the quartiles of the
    uncensored times. Padding children hold large garbage (the mask must keep it out).
    """
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(dim, generator=g), dim=0)
    r = torch.randn(n_patients, generator=g)
    bags = []
    for i in range(n_patients):
        n = int(torch.randint(20, 61, (1,), generator=g))
        mask = torch.rand(n, 16, generator=g) < 0.85
        aligned = (torch.rand(n, 16, generator=g) < 0.5 * torch.sigmoid(1.5 * r[i])) & mask
        x20 = torch.randn(n, 16, dim, generator=g) + 3.0 * aligned.unsqueeze(-1) * u
        x20 = torch.where(mask.unsqueeze(-1), x20, 5 * torch.randn(n, 16, dim, generator=g))
        w = mask.float().unsqueeze(-1)
        x5 = (x20 * w).sum(1) / w.sum(1).clamp_min(1) + 0.3 * torch.randn(n, dim, generator=g)
        bags.append((x5, x20, mask))
    t = -torch.log(torch.rand(n_patients, generator=g)) / torch.exp(2 * r) * 300
    c = -torch.log(torch.rand(n_patients, generator=g)) / 0.5 * 300
    event = t <= c
    times = torch.minimum(t, c)
    cuts = torch.quantile(times[event], torch.tensor([0.25, 0.5, 0.75]))
    return {"bags": bags, "u": u, "time": times, "event": event, "bin": torch.bucketize(times, cuts)}


def harrell_c(times: Tensor, event: Tensor, risk: Tensor) -> float:
    """Comparable pairs: i had the event before j's time; concordant when risk_i > risk_j (ties count half)."""
    comparable = event[:, None] & (times[:, None] < times[None, :])
    concordant = (risk[:, None] > risk[None, :]).float() + 0.5 * (risk[:, None] == risk[None, :]).float()
    return float((concordant * comparable).sum() / comparable.sum())


def hazard_nll(logits: Tensor, y: Tensor, censored: Tensor) -> Tensor:
    """Discrete-time hazard NLL: -(1-c)(log S(y-1) + log h(y)) - c log S(y), S(-1) = 1."""
    h = torch.sigmoid(logits)
    survival = torch.cumprod(1 - h, dim=0)
    before = torch.cat([survival.new_ones(1), survival])[y]
    return (-(1 - censored) * (before.clamp_min(1e-7).log() + h[y].clamp_min(1e-7).log())
            - censored * survival[y].clamp_min(1e-7).log())


@pytest.fixture(scope="module")
def cohort() -> dict:
    return synthetic_cohort()


def test_prompt_risk_ranks_patients_without_training(cohort):
    u, one = cohort["u"][None], torch.ones(1)
    risk = torch.stack([prompt_risk(*b, u, u, one, one) for b in cohort["bags"]])
    assert harrell_c(cohort["time"], cohort["event"], risk) > 0.6
    flipped = torch.stack([prompt_risk(*b, u, u, -one, -one) for b in cohort["bags"][:5]])
    assert torch.allclose(flipped, -risk[:5])


def test_hila_learns_the_planted_risk(cohort, one_torch_thread):
    torch.manual_seed(0)
    net = HiLa(64, 4, HiLaConfig(hidden=32, heads=4), LearnableTexts(K, 64), LearnableTexts(K, 64))
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    bags, bins, censored = cohort["bags"], cohort["bin"], (~cohort["event"]).float()
    train, test = list(range(120)), list(range(120, 150))
    t0 = time.perf_counter()
    for _ in range(5):
        net.train()
        for i in torch.randperm(len(train)).tolist():
            out = net(*bags[train[i]])
            loss = hazard_nll(out.logits, bins[train[i]], censored[train[i]]) + out.aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    assert time.perf_counter() - t0 < 60
    net.eval()
    with torch.no_grad():
        texts = net.encode_texts()
        risk = torch.stack([-torch.cumprod(1 - torch.sigmoid(net(*bags[i], texts=texts).logits), 0).sum() for i in test])
    assert harrell_c(cohort["time"][test], cohort["event"][test], risk) > 0.7
