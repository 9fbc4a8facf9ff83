"""Compare a backbone before and after HLSS pretraining on one labelled task.

Inputs are explicit file lists, paired to slides by file stem: each backbone's 20x patch feature files (the kNN
inputs; their coords must match slide by slide), 5x and hierarchical feature files (the zero-shot bags) and its
text embeddings of the task's prompts (text_{task}.h5). Measures cross-validated, patient-grouped weighted-kNN
accuracy of the frozen 20x features at patch, slide and patient level (HiDisc / HLSS protocol) and zero-shot accuracy
at slide and patient level. Slides lacking a file on either side are left out with a warning. Writes --out-csv
(task, metric, level, n, <before>, <after>, change) and --out-md (the same, 3 decimals, with the protocol).
"""

from __future__ import annotations

import argparse

NAME = "hlss-eval"
HELP = "kNN + zero-shot accuracy of a backbone before vs after HLSS pretraining -> csv + md table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.pretrain import knn

    parser.add_argument("--task", required=True, help="task name (config.yaml tasks:), recorded in the table")
    parser.add_argument("--task-type", default="classification", choices=["classification", "hierarchical"],
                        help="the task's type (hierarchical: evaluated on the fine labels)")
    parser.add_argument("--label-tree", nargs="*", default=[], metavar="COARSE=FINE,FINE",
                        help="the task's label tree (hierarchical tasks; classification over the coarse level)")
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label[,level0_mag])")
    parser.add_argument("--prompts", default="",
                        help="the task's checked prompt JSON (default: classes and texts from --before-text)")
    for side in ("before", "after"):
        what = "the backbone before pretraining (e.g. tiny)" if side == "before" else \
            "the pretrained backbone (e.g. tiny_hlss)"
        parser.add_argument(f"--{side}", required=True, help=f"name of {what}; names its column")
        parser.add_argument(f"--{side}-20x", nargs="+", required=True, help=f"{side}: 20x feature files, one per slide")
        parser.add_argument(f"--{side}-5x", nargs="+", required=True, help=f"{side}: 5x feature files, one per slide")
        parser.add_argument(f"--{side}-hierarchical", nargs="+", required=True,
                            help=f"{side}: hierarchical 5x-20x feature files, one per slide")
        parser.add_argument(f"--{side}-text", required=True, help=f"{side}: text_{{task}}.h5 of that backbone")
    parser.add_argument("--folds", type=int, default=knn.DEFAULT_FOLDS,
                        help="patient-grouped kNN folds (fewer if a class is small)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patch sample and the folds")
    parser.add_argument("--k", type=int, default=knn.DEFAULT_K, help="kNN neighbours (HLSS: 200)")
    parser.add_argument("--temperature", type=float, default=knn.DEFAULT_TEMPERATURE,
                        help="kNN vote temperature (HLSS: 0.07)")
    parser.add_argument("--patches-per-slide", type=int, default=knn.DEFAULT_PATCHES_PER_SLIDE,
                        help="20x patches sampled per slide (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--out-csv", required=True, help="output table (csv)")
    parser.add_argument("--out-md", required=True, help="output table (markdown)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.labels import parse_tree_args
    from pipeline.pretrain.evaluation import (
        backbone_files,
        evaluate_pretraining,
        load_eval_task,
        slide_cases,
        write_evaluation,
    )

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    task = load_eval_task(args.task_type, args.task, args.dataset, args.prompts or None,
                          parse_tree_args(args.label_tree), args.before_text)
    sides = [
        backbone_files(getattr(args, side), getattr(args, f"{side}_20x"), getattr(args, f"{side}_5x"),
                       getattr(args, f"{side}_hierarchical"), getattr(args, f"{side}_text"))
        for side in ("before", "after")
    ]
    table = evaluate_pretraining(task, slide_cases(args.dataset), *sides, folds=args.folds, seed=args.seed, k=args.k,
                                 temperature=args.temperature, patches_per_slide=args.patches_per_slide)
    title = f"HLSS pretraining: {args.before} vs {args.after} on {args.task}"
    write_evaluation(table, args.out_csv, args.out_md, title)
    return 0
