"""Train and evaluate one registered method on every fold of one task / backbone / shot count.

Inputs are explicit files: dataset.csv, the task's prompt file, its split files (splits_{k}.csv), the 5x and
hierarchical feature files of the cohort's slides, and the prompt texts' embeddings (text_{task}.h5, for methods
that read them). Writes exactly the paths it is given: --checkpoints (one per fold, in fold order), --summary (per
fold), --predictions (per test slide), --attributes, and the folders --curves and --plots (PNG); or, by hand, all
of them inside --out-dir under the workflow's names. The shared training flags and their defaults come from
pipeline.training.config; the method's own settings are `--method-settings key=value ...` (its Settings dataclass:
`python -m pipeline methods --settings NAME`), the task type's `--task-settings key=value ...`.
"""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError

NAME = "train"
HELP = "train + evaluate one method (hivemil, abmil_5x, abmil_20x, zeroshot, ...) per fold -> results folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.training.methods import list_methods
    from pipeline.training.tasks import list_task_types

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
    out = parser.add_argument_group("outputs (the workflow gives each path; --out-dir alone puts them in one folder)")
    out.add_argument("--out-dir", default="", help="a folder for every output under the workflow's names")
    out.add_argument("--summary", default="", help="per-fold metrics (csv)")
    out.add_argument("--predictions", default="", help="per test slide and fold (csv)")
    out.add_argument("--attributes", default="", help="top attributes per test target (csv; header only if none)")
    out.add_argument("--checkpoints", nargs="*", default=[], help="one checkpoint per split file, in fold order")
    out.add_argument("--curves", default="", help="folder of the per-fold training curves (csv)")
    out.add_argument("--plots", default="", help="folder of the plots (png)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 is fastest for small graphs on a busy CPU")
    parser.add_argument("--method-settings", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the method's own settings (`python -m pipeline methods --settings NAME`), the rest "
                             "default; values are JSON (true, 3, 1e-4) or plain strings")
    parser.add_argument("--task-settings", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the task type's own settings (survival: bins, alpha, epochs, batch_size, lr)")
    from pipeline.settings import add_arguments as add_settings_arguments
    from pipeline.training.config import TrainConfig

    add_settings_arguments(parser, TrainConfig, "training (defaults: pipeline.training.config)")


def _optional_int(value: str) -> int | None:
    return int(value) if value.strip() else None


def config_from_args(args: argparse.Namespace):
    from pipeline.settings import from_args
    from pipeline.training.config import TrainConfig

    return from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.labels import parse_tree_args
    from pipeline.settings import parse_assignments
    from pipeline.training.data import pair_feature_files
    from pipeline.training.run import train_method
    from pipeline.training.tasks import load_task

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = config_from_args(args)
    method_settings = parse_assignments(args.method_settings, "--method-settings")
    task_settings = parse_assignments(args.task_settings, "--task-settings")
    task = load_task(args.task_type, args.task, args.dataset, args.prompts, parse_tree_args(args.label_tree),
                     settings=task_settings, labels=args.labels)
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
        out_dir=args.out_dir or None, outputs=outputs_from_args(args), shots=args.shots, text_embeddings=args.text_embeddings or None, weights=args.weights,
        tokenizer=args.tokenizer, config=config, descriptions=descriptions, settings=method_settings,
    )
    return 0


def outputs_from_args(args: argparse.Namespace):
    """The explicit output paths, or None when only --out-dir is given; a partial set is refused by name."""
    from pathlib import Path

    from pipeline.training.run import TrainOutputs

    named = {k: getattr(args, k) for k in ("summary", "predictions", "attributes", "checkpoints", "curves", "plots")}
    if not any(named.values()):
        if not args.out_dir:
            raise PipelineError("train: give the output paths (--summary, --predictions, ...) or --out-dir")
        return None
    missing = [f"--{k}" for k, v in named.items() if not v]
    if missing:
        raise PipelineError(f"train: the output paths {missing} are missing (give all of them, or --out-dir alone)")
    return TrainOutputs(Path(args.summary), Path(args.predictions), Path(args.attributes),
                        tuple(Path(p) for p in args.checkpoints), Path(args.curves), Path(args.plots))
