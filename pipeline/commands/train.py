"""Train and evaluate HiVE-MIL and its baselines on every fold of one task / backbone / shot count.

Reads dataset.csv, the split folder ({task}_{shots}/splits_{k}.csv), the prompt JSON and the feature folder
(features/{backbone}/ with {backbone}_5x/ and hierarchical_{backbone}_5x_20x/, ours or HiVE-MIL's download).
Per fold and method: seed reset, Adam, early stopping on validation error (patience), best epoch restored, test.
Writes into --out-dir: checkpoints/, summary.csv (per fold), results.csv (mean/std of ACC, AUC, macro-F1),
comparison.csv/.md (methods side by side), predictions.csv (per test slide), curves/ and plots/ (PNG).
The --hier-attention, --htcl-negatives, --logit-scale and --filter-at-eval switches select the paper's method
(default) or the public reference code's behaviour (dense, no negatives, raw, filtering at evaluation).
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train + evaluate HiVE-MIL, ABMIL (5x, 20x) and zero-shot per fold -> results folder"

# Literal copies (a test checks them against pipeline.train / pipeline.model) so that building the CLI parser does
# not import torch and torch_geometric for every other command.
METHODS = ("hivemil", "abmil_5x", "abmil_20x", "zeroshot")
HIER_MODES = ("edges", "dense")
LOGIT_SCALE_MODES = ("exp", "raw")
DEFAULTS = dict(epochs=50, patience=10, lr=1e-4, weight_decay=1e-5, seed=1, hier_attention="edges",
                htcl_negatives=True, logit_scale="exp", filter_at_eval=False, top_k_5x=2, top_k_20x=100, n_ctx=16,
                device="auto", cache_gb=4.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = argparse.Namespace(methods=METHODS, **DEFAULTS)
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label[,level0_mag])")
    parser.add_argument("--splits-dir", required=True, help="folder with splits_{k}.csv (columns train,val,test)")
    parser.add_argument("--prompts", required=True, help="prompt JSON {class: {term: explanation}}, 16 per class")
    parser.add_argument("--features-dir", required=True,
                        help="features/{backbone}: holds {backbone}_5x/ and hierarchical_{backbone}_5x_20x/")
    parser.add_argument("--backbone", required=True, help="backbone name (the one that made the features)")
    parser.add_argument("--weights", default=None,
                        help="backbone weights: a file, a hub id, or 'random' (text tower of prompts/zero-shot)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (CONCH)")
    parser.add_argument("--out-dir", required=True, help="results/{task}/{backbone}/{shots}shot")
    parser.add_argument("--folds", type=int, nargs="*", default=None, help="fold numbers (default: every file)")
    parser.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS, help="methods to run")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    parser.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience (epochs)")
    parser.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help="Adam weight decay")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed, reset before every fold and method")
    parser.add_argument("--hier-attention", choices=HIER_MODES, default=d.hier_attention,
                        help="edges: parent-child only (paper, linear memory); dense: all pairs (reference code)")
    parser.add_argument("--htcl-negatives", action=argparse.BooleanOptionalAction, default=d.htcl_negatives,
                        help="HTCL negative term (paper); --no-htcl-negatives as the reference code")
    parser.add_argument("--logit-scale", choices=LOGIT_SCALE_MODES, default=d.logit_scale,
                        help="exp: exp(theta) (paper); raw: theta (reference code)")
    parser.add_argument("--filter-at-eval", action=argparse.BooleanOptionalAction, default=d.filter_at_eval,
                        help="TGDF at evaluation too (reference code); default: training only (paper)")
    parser.add_argument("--top-k-5x", type=int, default=d.top_k_5x, help="patches per coarse text in the logits")
    parser.add_argument("--top-k-20x", type=int, default=d.top_k_20x, help="patches per fine text in the logits")
    parser.add_argument("--n-ctx", type=int, default=d.n_ctx, help="learnable prompt context vectors")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 is fastest for small graphs on a busy CPU")
    parser.add_argument("--cache-gb", type=float, default=d.cache_gb, help="slide features kept in memory (GB)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.train import TrainConfig, train_task

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        methods=tuple(args.methods), epochs=args.epochs, patience=args.patience, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, hier_attention=args.hier_attention,
        htcl_negatives=args.htcl_negatives, logit_scale=args.logit_scale, filter_at_eval=args.filter_at_eval,
        top_k_5x=args.top_k_5x, top_k_20x=args.top_k_20x, n_ctx=args.n_ctx, device=args.device,
        cache_gb=args.cache_gb,
    )
    train_task(
        dataset_csv=args.dataset, splits_dir=args.splits_dir, prompts_json=args.prompts,
        features_dir=args.features_dir, backbone_name=args.backbone, out_dir=args.out_dir, weights=args.weights,
        tokenizer=args.tokenizer, config=config, folds=args.folds,
    )
    return 0


def flags_from_config(section: dict) -> str:
    """The command-line flags for config.yaml's `train:` section (used by workflow/rules/model.smk)."""
    import shlex

    flags = [
        "--methods", *section["methods"],
        "--epochs", section["epochs"], "--patience", section["patience"], "--lr", section["lr"],
        "--weight-decay", section["weight_decay"], "--seed", section["seed"],
        "--hier-attention", section["hier_attention"], "--logit-scale", section["logit_scale"],
        "--htcl-negatives" if section["htcl_negatives"] else "--no-htcl-negatives",
        "--filter-at-eval" if section["filter_at_eval"] else "--no-filter-at-eval",
        "--top-k-5x", section["top_k"]["5x"], "--top-k-20x", section["top_k"]["20x"], "--n-ctx", section["n_ctx"],
        "--device", section["device"],
    ]
    return " ".join(shlex.quote(str(f)) for f in flags)
