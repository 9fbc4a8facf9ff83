"""Make the HiVE-MIL reference-parity fixture by running the public reference code once (not part of the tests).

The reference's model file (models/hivemil.py of github.com/bryanwong17/HiVE-MIL) is imported from a checkout given
on the command line; nothing of it is copied here. Its module-level imports of its CLIP tokenizer and dataset
package are satisfied by empty stand-ins (the tokenizer only serves its text branch, which is bypassed: the text
features are given directly, as HIVEMIL.md explains, since that branch's context receives no gradient).

What runs is the reference's own `CustomCLIP.forward` (filtering, graph, logits, HTCL) and `HierHeteroGNN` with
its own seeded initialisation, on seeded random raw features built so that some 5x parents are filtered out, kept
parents have zero-padded children, and some of those zero vectors receive text edges. Writes `fixture.pt` (inputs,
the graph's weights under the reference's names, logits, HTCL, filtering masks, graph outputs) and
`fixture.json` (how it was made).

    git clone https://github.com/bryanwong17/HiVE-MIL /tmp/HiVE-MIL   # commit 31c8f6c
    python tests/data/hivemil_reference/make_fixture.py --reference-dir /tmp/HiVE-MIL
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch_geometric
from torch import nn

HERE = Path(__file__).resolve().parent
N_CLASSES, DIM, N5, CHILDREN = 3, 32, 14, 16
THETA = math.log(100.0)  # the raw logit-scale parameter of a trained CLIP (PLIP: about 4.6)


def import_reference(reference_dir: Path) -> types.ModuleType:
    """The reference's models/hivemil.py as a module, its tokenizer and dataset imports stood in for."""
    clip = types.ModuleType("clip")
    tokenizer = types.ModuleType("clip.simple_tokenizer")
    tokenizer.SimpleTokenizer = type("SimpleTokenizer", (), {})  # only its text branch would use it
    clip.simple_tokenizer = tokenizer
    datasets = types.ModuleType("dataset_model")
    datasets.get_class_names = lambda name: [f"class{c}" for c in range(N_CLASSES)]
    sys.modules.update({"clip": clip, "clip.simple_tokenizer": tokenizer, "dataset_model": datasets})
    spec = importlib.util.spec_from_file_location("reference_hivemil", reference_dir / "models" / "hivemil.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GivenTexts(nn.Module):
    """Stands in for the reference's prompt learner + text encoder pair: returns the given features per class."""

    def __init__(self, texts: torch.Tensor):
        super().__init__()
        self.texts = texts  # [C, 16, D]
        self.tokenized_prompts = OrderedDict((f"class{c}", None) for c in range(len(texts)))

    def forward(self, *args: object) -> OrderedDict:
        return OrderedDict((f"class{c}", t) for c, t in enumerate(self.texts))


def reference_model(ref: types.ModuleType, texts: torch.Tensor, seed: int) -> nn.Module:
    """The reference's CustomCLIP around its own HierHeteroGNN, with the text side replaced by given features."""
    torch.manual_seed(seed)
    model = ref.CustomCLIP.__new__(ref.CustomCLIP)
    nn.Module.__init__(model)
    model.num_classes, model.filter_alpha, model.dim = N_CLASSES, 0.5, DIM
    model.graph_prompt_learner = ref.HierHeteroGNN(DIM, DIM, DIM)
    given = GivenTexts(texts)
    model.prompt_learner, model.text_encoder = given, given
    model.logit_scale = nn.Parameter(torch.tensor(THETA))
    model.mag_ratio, model.num_low_mag_texts, model.num_high_mag_subtexts = CHILDREN, 4, 3
    return model.eval()


def inputs(seed: int) -> dict[str, torch.Tensor]:
    """Raw (not unit-length) features around a shared direction, as CLIP-like towers give them.

    The texts share a component (some fine texts with the opposite sign, so that their similarities to the
    children are mostly negative and a zero vector ranks high); three 5x patches point against every coarse text
    (filtered out); about 30% of the children are missing (zero rows, mask False).
    """
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(DIM, generator=g)
    common = common / common.norm()
    sign = torch.ones(N_CLASSES, 16, 1)
    sign[:, 4::3] = -1.0
    texts = (sign * 2.0 * common + torch.randn(N_CLASSES, 16, DIM, generator=g)) \
        * torch.empty(N_CLASSES, 16, 1).uniform_(0.5, 2.0, generator=g)
    x5 = 1.5 * common + torch.randn(N5, DIM, generator=g)
    x5[-3:] = -3.0 * common + 0.3 * torch.randn(3, DIM, generator=g)
    x5 = x5 * torch.empty(N5, 1).uniform_(0.5, 3.0, generator=g)
    x20 = x5[:, None] + torch.randn(N5, CHILDREN, DIM, generator=g)
    mask = torch.rand(N5, CHILDREN, generator=g) > 0.3
    mask[:, 0] = True
    x20[~mask] = 0.0
    return {"x5": x5, "x20": x20, "mask": mask, "texts": texts.reshape(-1, DIM)}


def run(ref: types.ModuleType, model: nn.Module, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's forward, and its filtering decisions recomputed with its own function."""
    x5, x20 = data["x5"], data["x20"]
    with torch.no_grad():
        logits, htcl = model(x5, x20.reshape(-1, DIM))
        per_class = data["texts"].view(N_CLASSES, 16, DIM)
        t5, t20 = per_class[:, :4].reshape(-1, DIM), per_class[:, 4:].reshape(-1, DIM)
        sim5, matched = model.process_similarity(t5, x5, model.filter_alpha)
        children = x20[matched].reshape(-1, DIM)
        sim20, _ = model.process_similarity(t20, children, model.filter_alpha)
    if not torch.equal(matched, model.x5_mask):
        raise RuntimeError("recomputed 5x filtering differs from the forward's")
    return {
        "logits": logits, "htcl": htcl, "keep5": sim5 != 0, "matched5": matched, "keep20": sim20 != 0,
        "img5": model.x5_image_embeddings, "txt5": model.x5_text_embeddings,
        "img20": model.x20_image_embeddings, "txt20": model.x20_text_embeddings,
    }


def check_self_convs_unused(ref: types.ModuleType, model: nn.Module, data: dict[str, torch.Tensor],
                            out: dict[str, torch.Tensor]) -> list[str]:
    """The reference registers a SAGE convolution per 'self' relation but has no such edges: changing their weights
    must leave every output as it was, so the fixture can leave them out. Returns their keys."""
    keys = [k for k in model.graph_prompt_learner.state_dict() if "self" in k]
    with torch.no_grad():
        for name, param in model.graph_prompt_learner.named_parameters():
            if "self" in name:
                param.add_(1.0)
    again = run(ref, model, data)
    if not torch.equal(again["logits"], out["logits"]):
        raise RuntimeError("the reference's self-relation convolutions change its output")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, required=True, help="checkout of bryanwong17/HiVE-MIL")
    parser.add_argument("--seed", type=int, default=13, help="seed of the inputs and of the reference's weights")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ref = import_reference(args.reference_dir)
    data = inputs(args.seed)
    model = reference_model(ref, data["texts"].view(N_CLASSES, 16, DIM), args.seed)
    state = {k: v.clone() for k, v in model.graph_prompt_learner.state_dict().items()}
    out = run(ref, model, data)
    unused = check_self_convs_unused(ref, model, data, out)
    state = {k: v for k, v in state.items() if k not in unused}
    matched = out["matched5"]
    padded = ~data["mask"][matched].reshape(-1)
    stats = {
        "parents": N5, "parents_filtered_out": int((~matched).sum()), "20x_nodes": int(matched.sum()) * CHILDREN,
        "zero_padded_20x_nodes": int(padded.sum()),
        "zero_padded_20x_nodes_with_text_edges": int(out["keep20"][padded].any(1).sum()),
        "5x_edges": int(out["keep5"].sum()), "20x_edges": int(out["keep20"].sum()),
    }
    if not (stats["parents_filtered_out"] and stats["zero_padded_20x_nodes_with_text_edges"]):
        raise RuntimeError(f"the inputs do not exercise filtering and padded children: {stats}")
    commit = subprocess.run(["git", "-C", str(args.reference_dir), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    record = {
        "what": "outputs of the public HiVE-MIL reference code's CustomCLIP.forward (text features given directly) "
                "on seeded random raw features, and the initial graph weights it ran with",
        "reference_repo": "https://github.com/bryanwong17/HiVE-MIL", "reference_commit": commit,
        "reference_file": "models/hivemil.py",
        "command": "python tests/data/hivemil_reference/make_fixture.py --reference-dir <checkout> "
                   f"--seed {args.seed}",
        "seed": args.seed, "classes": N_CLASSES, "dim": DIM, "heads": 2, "layers": 2, "alpha": 0.5,
        "logit_scale_theta": THETA, "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
        "left_out_weights": "the 'self' relation SAGE convolutions (registered, never run: changing them was "
                            "checked to leave the outputs unchanged)",
        "stats": stats,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fixture = {"inputs": data, "logit_scale_theta": torch.tensor(THETA), "reference_state": state,
               "outputs": {k: v.detach().clone() for k, v in out.items()}}
    tmp = args.out_dir / "fixture.pt.tmp"
    torch.save(fixture, tmp)
    tmp.replace(args.out_dir / "fixture.pt")
    tmp = args.out_dir / "fixture.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out_dir / "fixture.json")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
