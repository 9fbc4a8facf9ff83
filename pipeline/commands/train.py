"""Train and evaluate one registered method on every fold of one task / backbone / shot count.

Inputs are explicit files: dataset.csv, the task's prompt file, its split files (splits_{k}.csv), the 5x and
hierarchical feature files of the cohort's slides, and the prompt texts' embeddings (text_{task}.h5, for methods
that read them). Writes into --out-dir: checkpoints/fold{k}.pt, summary.csv (per fold), predictions.csv (per test
slide), curves/ and plots/ (PNG). Every training flag and its default comes from pipeline.training.config; the
switches --hier-attention, --hier-block, --htcl-negatives, --logit-scale, --filter-at-eval, --normalize-inputs,
--keep-padded-children, --filter-std and --best-epoch select the paper's method (default) or, one departure each,
the public reference code's behaviour; --reference sets them all as the reference code.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from pipeline.errors import PipelineError

NAME = "train"
HELP = "train + evaluate one method (hivemil, abmil_5x, abmil_20x, zeroshot, ...) per fold -> results folder"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--epochs, --no-htcl-negatives, ...), default and help from the field."""
    from pipeline.training.config import TrainConfig

    group = parser.add_argument_group("training (defaults: pipeline.training.config)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert f.default is not MISSING
        kind = type(f.default)
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            group.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                               help=f"{f.metadata['help']} (default {f.default})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.training.registry import list_methods, list_task_types

    parser.add_argument("--task", required=True, help="task name (config.yaml tasks:), recorded in every output")
    parser.add_argument("--task-type", default="classification", choices=list_task_types(), help="the task's type")
    parser.add_argument("--method", required=True, choices=list_methods(), help="registered method to train")
    parser.add_argument("--dataset", required=True, help="dataset.csv (case_id,slide_id,label[,level0_mag])")
    parser.add_argument("--prompts", required=True, help="the task's checked prompt JSON ({class: {term: text}})")
    parser.add_argument("--splits", nargs="+", required=True, help="split files splits_{k}.csv (columns train,val,test)")
    parser.add_argument("--features-5x", nargs="+", required=True, help="5x feature files, one per slide")
    parser.add_argument("--hierarchical", nargs="+", required=True, help="hierarchical 5x-20x feature files, one per slide")
    parser.add_argument("--text-embeddings", default="", help="text_{task}.h5 of the same backbone (zero-shot texts)")
    parser.add_argument("--questions", default="",
                        help="FiVE: the task's checked question set (cohort/questions/{task}.json)")
    parser.add_argument("--descriptions", default="",
                        help="FiVE: the patients' report descriptions (descriptions/{task}.csv: case_id + one column "
                             "per question)")
    parser.add_argument("--label-tree", nargs="*", default=[], metavar="COARSE=FINE,FINE",
                        help="the task's label tree (hierarchical tasks; classification over the coarse level)")
    parser.add_argument("--labels", nargs="*", default=[],
                        help="survival tasks: use only slides of these labels (default: every labelled slide)")
    parser.add_argument("--backbone", required=True, help="backbone name (the one that made the features)")
    parser.add_argument("--weights", default=None,
                        help="backbone weights for methods that read its text tower: a file, a hub id, or 'random'")
    parser.add_argument("--tokenizer", default=None, help="tokenizer file (CONCH)")
    parser.add_argument("--shots", type=_optional_int, default=None,
                        help="training slides per class, recorded in the tables (empty: a cross-validated task)")
    parser.add_argument("--out-dir", required=True, help="models/{task}/{backbone}/{run}/{method}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 is fastest for small graphs on a busy CPU")
    add_config_arguments(parser)


def _optional_int(value: str) -> int | None:
    return int(value) if value.strip() else None


def config_from_args(args: argparse.Namespace):
    from pipeline.training.config import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.labels import parse_tree_args
    from pipeline.training.data import pair_feature_files
    from pipeline.training.run import train_method
    from pipeline.training.tasks import load_task

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    task = load_task(args.task_type, args.task, args.dataset, args.prompts, parse_tree_args(args.label_tree),
                     config=config, labels=args.labels)
    descriptions = None
    if bool(args.questions) != bool(args.descriptions):
        raise PipelineError("give --questions and --descriptions together (FiVE's question set and descriptions)")
    if args.descriptions:
        from pipeline.dataset import read_dataset
        from pipeline.descriptions.table import load_fine_grained

        dataset = read_dataset(args.dataset)
        cases = dict(zip(dataset["slide_id"], dataset["case_id"]))
        descriptions = load_fine_grained(args.questions, args.descriptions, cases, labels=task.classes)
    train_method(
        task=task, method=args.method, split_files=args.splits,
        features=pair_feature_files(args.features_5x, args.hierarchical), backbone_name=args.backbone,
        out_dir=args.out_dir, shots=args.shots, text_embeddings=args.text_embeddings or None, weights=args.weights,
        tokenizer=args.tokenizer, config=config, descriptions=descriptions,
    )
    return 0
