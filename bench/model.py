"""Benchmark: peak memory and seconds per training step of HiVE-MIL (`edges` against `dense` hierarchical
attention, and `reference`: `train.reference: true`, the public reference code's computation, dense and with its
shared attention block) and of HiLa (pipeline.model.hila, default HiLaConfig, one prompt learner per level).

One slide of N 5x parents with 16 kept children each (D = 512, the tiny backbone's text tower for the prompts),
one forward + backward + Adam step, as in training (HiVE-MIL: cross-entropy + HTCL; HiLa: a discrete-hazard NLL
over 4 bins + its MCL term, 8 prompts per level). Every (mode, N) runs in a fresh subprocess so its peak memory
is its own. Prints the table (with each model's trainable parameters), then growth ratios against the smallest N
(linear: 4x per 4x parents; quadratic: 16x) and dense and reference against edges at the same N. Dense and
reference runs whose attention matrices alone would pass --dense-budget-gb are skipped and their estimate is
printed instead.

    /work/venv/bin/python bench/model.py                      # 250, 1000, 4000 parents on the CPU
    /work/venv/bin/python bench/model.py --parents 250 1000 --steps 2 --device cuda
    /work/venv/bin/python bench/model.py --modes hila --steps 1
    /work/venv/bin/python bench/model.py --modes edges reference --parents 250 1000 --steps 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILDREN = 16
HEADS = 2
LAYERS = 2
MODES = ("edges", "dense", "reference", "hila")
QUADRATIC = ("dense", "reference")  # all-pairs hierarchical attention
HILA_PROMPTS = 8  # per level
HILA_BINS = 4


def dense_attention_gb(n5: int) -> float:
    """GB of the dense 5x<->20x attention weights kept for backward (layers x 2 directions x heads x M x N floats),
    plus half again for the scores alive while each softmax runs; 1000 parents measure ~0.7 GB on the CPU."""
    return LAYERS * 2 * HEADS * (n5 * CHILDREN) * n5 * 4 * 1.5 / 1e9


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def build(mode: str, backbone, dev):
    """The model of one benchmark mode and its loss `(model, output) -> scalar`."""
    import torch

    from pipeline.model.prompt_learner import PromptLearner

    if mode == "hila":
        from pipeline.model.hila import HiLa

        def prompts(level: str) -> list[str]:
            return [f"{level} attribute {i}: a tissue pattern tied to survival, number {i}" for i in range(HILA_PROMPTS)]

        model = HiLa(backbone.embed_dim, HILA_BINS, None, PromptLearner(backbone, prompts("region")),
                     PromptLearner(backbone, prompts("patch")))
        y, censored = torch.tensor(1, device=dev), torch.tensor(0.0, device=dev)

        def loss(model, out):  # discrete-hazard NLL of an event in bin y, plus the MCL term
            h = torch.sigmoid(out.logits)
            s = torch.cumprod(1 - h, 0)
            before = torch.cat([s.new_ones(1), s])[y]
            nll = -(1 - censored) * (before.clamp_min(1e-7).log() + h[y].clamp_min(1e-7).log()) \
                - censored * s[y].clamp_min(1e-7).log()
            return nll + out.aux

        return model.to(dev).train(), loss
    from pipeline.model.hivemil import HiveMIL, HiveMILConfig

    texts = [f"class {c} description {i}: a tissue pattern number {i}" for c in range(2) for i in range(16)]
    config = HiveMILConfig(reference=True) if mode == "reference" else HiveMILConfig(hier_attention=mode)
    model = HiveMIL(backbone.embed_dim, 2, backbone.logit_scale, config, PromptLearner(backbone, texts))
    label = torch.tensor(1, device=dev)
    return model.to(dev).train(), lambda model, out: model.loss(out, label)


def child(mode: str, n5: int, steps: int, device: str, threads: int) -> dict:
    """Run `steps` training steps (after one warm-up) and report seconds per step and peak extra memory."""
    import torch

    from pipeline.features import create_backbone

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    backbone = create_backbone("tiny", weights="random").to(dev)
    model, loss = build(mode, backbone, dev)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
    d = backbone.embed_dim
    x5 = torch.randn(n5, d, device=dev)
    x20 = x5[:, None] + 0.5 * torch.randn(n5, CHILDREN, d, device=dev)
    mask = torch.ones(n5, CHILDREN, dtype=torch.bool, device=dev)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x5, x20, mask)
        loss(model, out).backward()
        opt.step()

    def warm_up() -> None:  # Adam state and allocator pools, on a slide too small to leave a large free pool
        opt.zero_grad(set_to_none=True)
        loss(model, model(x5[:2], x20[:2], mask[:2])).backward()
        opt.step()

    warm_up()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _rss_kb("VmRSS") * 1024
    step()  # first full-size step (counted in memory, not in time)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kb("VmHWM") * 1024
    seconds = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"mode": mode, "parents": n5, "seconds": seconds, "peak_gb": max(peak - base, 0) / 1e9, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parents", type=int, nargs="+", default=[250, 1000, 4000])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="HiVE-MIL with edges or dense hierarchical attention or as the reference code, HiLa")
    parser.add_argument("--dense-budget-gb", type=float, default=6.0,
                        help="skip dense runs whose attention scores alone would need more")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.steps, args.device, args.threads)))
        return
    rows = []
    for n5 in args.parents:
        for mode in args.modes:
            if mode in QUADRATIC and dense_attention_gb(n5) > args.dense_budget_gb:
                rows.append({"mode": mode, "parents": n5, "seconds": None, "peak_gb": None, "params": None,
                             "note": f"skipped: ~{dense_attention_gb(n5):.0f} GB of attention scores"})
                continue
            cmd = [sys.executable, __file__, "--child", mode, str(n5), "--steps", str(args.steps),
                   "--device", args.device, "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"mode": mode, "parents": n5, "seconds": None, "peak_gb": None, "params": None,
                             "note": f"failed: {done.stderr.strip().splitlines()[-1][:80]}"})
                continue
            rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "note": ""})
            print(f"  {mode:5s} {n5:5d}: {rows[-1]['seconds']:.2f} s/step, {rows[-1]['peak_gb']:.2f} GB", flush=True)
    print(f"\nTraining step, one slide ({args.device}, {args.threads} threads, D=512, 16 children/parent); "
          "edges/dense: HiVE-MIL's hierarchical attention, reference: train.reference, hila: HiLa\n")
    print(f"| {'model':9s} | {'5x parents':>10s} | {'20x nodes':>9s} | {'params':>7s} | {'s/step':>7s} "
          f"| {'peak extra GB':>13s} | note")
    print(f"|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 15}|------")
    for r in rows:
        s = f"{r['seconds']:.2f}" if r["seconds"] is not None else "-"
        m = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "-"
        n = f"{r['params'] / 1e6:.2f}M" if r["params"] is not None else "-"
        print(f"| {r['mode']:9s} | {r['parents']:10d} | {r['parents'] * CHILDREN:9d} | {n:>7s} | {s:>7s} | {m:>13s} "
              f"| {r['note']}")
    print("\nGrowth against the smallest size (linear = parents ratio, quadratic = its square):")
    for mode in args.modes:
        done = [r for r in rows if r["mode"] == mode and r["seconds"] is not None]
        if len(done) < 2:
            continue
        base = done[0]
        for r in done[1:]:
            k = r["parents"] / base["parents"]
            mem = r["peak_gb"] / base["peak_gb"] if base["peak_gb"] > 0 else float("nan")
            print(f"  {mode:5s} x{k:.0f} parents: time x{r['seconds'] / base['seconds']:.1f}, "
                  f"memory x{mem:.1f}  (linear x{k:.0f}, quadratic x{k * k:.0f})")
    for mode in QUADRATIC:
        print(f"\n{mode.capitalize()} against edges at the same size:")
        for n5 in args.parents:
            e = next((r for r in rows if r["mode"] == "edges" and r["parents"] == n5 and r["seconds"]), None)
            d = next((r for r in rows if r["mode"] == mode and r["parents"] == n5 and r["seconds"]), None)
            if e and d:
                print(f"  {n5:5d} parents: time x{d['seconds'] / e['seconds']:.1f}, "
                      f"memory x{d['peak_gb'] / max(e['peak_gb'], 1e-9):.1f}")


if __name__ == "__main__":
    main()
