"""Benchmark: how much each HiVE-MIL reference switch changes, and what `train.reference: true` still leaves
different, measured on identical inputs against the paper defaults in the same run.

Synthetic slides of CLIP-like raw features (D = 512): each 5x patch is one of 8 tissue kinds (its children mostly
the same kind, about 20% of them missing), each text describes one kind; a feature is the modality's shared
direction + its kind's prototype + noise, so image-text cosines are about 0.25, 0.45 for a matching kind, and its
norm spreads log-normally (--norm-spread, the standard deviation of the log-norm: unnormalised PLIP/QuiltNet
features are not unit-length, CONCH's are). Per slide size and spread it prints:

- filtering decisions (TGDF keep/drop of every patch-text entry) that change with raw features
  (`normalize_inputs: false`), with the sample std (`filter_std: sample`), with both, and with the reference's
  exact arithmetic on top (similarities times exp(theta) and 1e-8 added to the min-max range, which
  `reference: true` does not copy): 5x over all parents, 20x over the children of parents kept both ways;
- `keep_padded_children`: how many 20x nodes are zero vectors, how many of them get text edges, and what share of
  the top-100 picks of the fine texts they take after the graph (reference model, random weights);
- parameters of the graph: ours, `reference: true`, and what the reference code registers.

    /work/venv/bin/python bench/reference_departures.py
    /work/venv/bin/python bench/reference_departures.py --parents 2000 --norm-spread 0.1 0.3
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

DIM, CHILDREN, CLASSES, KINDS, THETA = 512, 16, 2, 8, math.log(100.0)


def clip_like(kind: torch.Tensor, mean: torch.Tensor, protos: torch.Tensor, spread: float,
              g: torch.Generator) -> torch.Tensor:
    """Raw features of the given tissue kinds: the modality's shared direction + the kind's prototype + noise,
    with log-norms of standard deviation `spread` around 10."""
    noise = torch.randn(len(kind), DIM, generator=g) / math.sqrt(DIM)
    x = F.normalize(1.2 * mean + 0.8 * protos[kind] + noise, dim=-1)
    return x * torch.exp(spread * torch.randn(len(kind), 1, generator=g)) * 10.0


def slide(n5: int, spread: float, seed: int) -> dict[str, torch.Tensor]:
    """A slide of KINDS tissue kinds (each 5x patch one kind, its children mostly the same); every text
    describes one kind. Image-text cosines are about 0.25, 0.45 for a text of the patch's own kind."""
    g = torch.Generator().manual_seed(seed)
    img_mean = F.normalize(torch.randn(DIM, generator=g), dim=0)
    other = F.normalize(torch.randn(DIM, generator=g), dim=0)
    txt_mean = F.normalize(0.5 * img_mean + 0.87 * other, dim=0)
    protos = F.normalize(torch.randn(KINDS, DIM, generator=g), dim=-1)
    kind5 = torch.randint(KINDS, (n5,), generator=g)
    kind20 = torch.where(torch.rand(n5, CHILDREN, generator=g) < 0.8, kind5[:, None],
                         torch.randint(KINDS, (n5, CHILDREN), generator=g))
    x5 = clip_like(kind5, img_mean, protos, spread, g)
    x20 = clip_like(kind20.reshape(-1), img_mean, protos, spread, g).view(n5, CHILDREN, DIM)
    mask = torch.rand(n5, CHILDREN, generator=g) > 0.2
    mask[:, 0] = True
    x20[~mask] = 0.0
    texts = clip_like(torch.randint(KINDS, (CLASSES * 16,), generator=g), txt_mean, protos, spread, g)
    return {"x5": x5, "x20": x20, "mask": mask, "texts": texts}


def reference_arithmetic_keep(similarity: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """The reference code's filtering arithmetic written out: similarities times exp(theta), 1e-8 added to the
    range, sample std, and a kept entry of value 0 is no edge."""
    s = similarity * math.exp(THETA)
    low, high = s.min(0, keepdim=True).values, s.max(0, keepdim=True).values
    norm = (s - low) / (high - low + 1e-8)
    threshold = norm.mean(0, keepdim=True) + alpha * norm.std(0, keepdim=True)
    return (norm >= threshold) & (norm != 0)


def filtering_changes(data: dict[str, torch.Tensor]) -> list[tuple[str, float, int, float]]:
    """Per rule: % of 5x decisions changed, parents kept differently, % of 20x decisions changed."""
    from pipeline.model.hivemil import tgdf_keep

    x5, x20, mask, texts = data["x5"], data["x20"], data["mask"], data["texts"]
    per_class = texts.view(CLASSES, 16, DIM)
    t5, t20 = per_class[:, :4].reshape(-1, DIM), per_class[:, 4:].reshape(-1, DIM)
    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731

    def decide(raw: bool, rule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a5, a20, b5, b20 = (x5, x20, t5, t20) if raw else (unit(x5), unit(x20), unit(t5), unit(t20))
        keep5 = rule(a5 @ b5.T)
        return keep5, keep5.any(1), a20, b20

    rules = {
        "paper (normalised, population std)": (False, lambda s: tgdf_keep(s)),  # the baseline
        "normalize_inputs: false": (True, lambda s: tgdf_keep(s)),
        "filter_std: sample": (False, lambda s: tgdf_keep(s, std="sample")),
        "both (what reference: true filters with)": (True, lambda s: tgdf_keep(s, std="sample")),
        "both + the reference's exact arithmetic": (True, reference_arithmetic_keep),
    }
    base5, base_matched, base20_x, base20_t = decide(*rules["paper (normalised, population std)"])
    rows = []
    for name, (raw, rule) in rules.items():
        keep5, matched, a20, b20 = decide(raw, rule)
        both = base_matched & matched
        children = mask & both[:, None]
        k_base = tgdf_keep(base20_x[children] @ base20_t.T)
        k_rule = rule(a20[children] @ b20.T)
        rows.append((name, 100 * (keep5 != base5).float().mean().item(), int((matched != base_matched).sum()),
                     100 * (k_rule != k_base).float().mean().item()))
    return rows


def padded_children(data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero-vector 20x nodes under `reference: true` (random weights): count, with edges, share of top-100 picks."""
    from pipeline.model.graph import INTRA_RELATIONS
    from pipeline.model.hivemil import HiveMIL, HiveMILConfig

    torch.manual_seed(0)
    model = HiveMIL(DIM, CLASSES, math.exp(THETA), HiveMILConfig(reference=True)).eval()
    with torch.no_grad():
        out = model(data["x5"], data["x20"], data["mask"], data["texts"])
    g = out.graph
    padded = ~data["mask"][g.child_parent, g.child_slot]
    with_edges = torch.zeros_like(padded)
    with_edges[g.edge_index_dict[INTRA_RELATIONS[2]][0]] = True
    sim = out.nodes["img20"] @ out.nodes["txt20"].T
    top = sim.topk(min(100, sim.size(0)), dim=0).indices  # [k, texts]
    return {"nodes": padded.numel(), "zero": int(padded.sum()), "zero_with_edges": int((padded & with_edges).sum()),
            "top_share": 100 * padded[top].float().mean().item(), "zero_share": 100 * padded.float().mean().item()}


def parameters() -> dict[str, int]:
    from pipeline.model.graph import HierarchicalHeteroGNN

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shared = count(HierarchicalHeteroGNN(DIM, hier_attention="dense", hier_block="shared"))
    return {"paper": count(HierarchicalHeteroGNN(DIM)), "reference: true": shared,
            "reference code, registered": shared + 2 * 4 * (2 * DIM * DIM + DIM)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parents", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--norm-spread", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--seeds", type=int, default=3, help="slides per spread (figures are their means)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Slides of 5x parents x 16 children (about 20% missing), D = {DIM}, {CLASSES} classes; "
          f"means over {args.seeds} seeds\n")
    print("| parents | norm spread | filtering rule | 5x decisions changed | parents kept differently "
          "| 20x decisions changed |")
    print("|---|---|---|---|---|---|")
    for n5 in args.parents:
        for spread in args.norm_spread:
            runs = [filtering_changes(slide(n5, spread, seed)) for seed in range(args.seeds)]
            for i, (name, *_) in enumerate(runs[0][1:], start=1):
                d5, parents, d20 = (sum(r[i][j] for r in runs) / len(runs) for j in (1, 2, 3))
                print(f"| {n5} | {spread} | {name} | {d5:.2f}% | {parents:.1f} | {d20:.2f}% |")
    print(f"\nZero-padded children under reference: true (random graph weights, {args.parents[-1]} parents, "
          "spread 0.2):")
    pad = padded_children(slide(args.parents[-1], 0.2, 0))
    print(f"  {pad['zero']} of {pad['nodes']} 20x nodes are zero vectors ({pad['zero_share']:.1f}%), "
          f"{pad['zero_with_edges']} of them with text edges; they take {pad['top_share']:.1f}% of the fine texts' "
          "top-100 picks")
    print("\nGraph parameters (D = 512):")
    for name, n in parameters().items():
        print(f"  {name}: {n:,} ({n / 1e6:.2f}M)")


if __name__ == "__main__":
    main()
