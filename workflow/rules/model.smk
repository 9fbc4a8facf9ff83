# Model: HiVE-MIL and its baselines trained and evaluated per fold (one job per task / backbone / shot count),
# then predictions on new slides from the trained fold checkpoints. The logic is pipeline/train.py and
# pipeline/predict.py. Input functions `train_inputs` (named inputs dataset, prompts, splits, features) and
# `predict_inputs` (named inputs checkpoints, features_5x, hierarchical, slides) are defined in common.smk.
from pipeline.commands import train as train_cmd


rule train:
    input:
        unpack(train_inputs),
    output:
        results=report(
            f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot/results.csv",
            caption="../report/results_comparison.rst",
            category="Results",
            labels={"task": "{task}", "backbone": "{backbone}", "shots": "{shots}", "table": "results"},
        ),
        summary=f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot/summary.csv",
        predictions=f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot/predictions.csv",
        comparison=f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot/comparison.md",
        checkpoints=expand(
            f"{OUT}/models/{{{{task}}}}/{{{{backbone}}}}/{{{{shots}}}}shot/checkpoints/{{method}}_fold{{k}}.pt",
            method=config["train"]["methods"],
            k=range(config["cohort"]["folds"]),
        ),
    log:
        f"{OUT}/logs/train/{{task}}/{{backbone}}/{{shots}}shot.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{task}}/{{backbone}}/{{shots}}shot.tsv"
    wildcard_constraints:
        backbone=r"[^/]+",
        shots=r"\d+",
    conda:
        "../../envs/model.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        splits_dir=f"{OUT}/splits/{{task}}_{{shots}}",
        features_dir=f"{OUT}/features/{{backbone}}",
        out_dir=f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot",
        weights=config["features"]["weights"],
        tokenizer=config["features"]["tokenizer"],
        folds=list(range(config["cohort"]["folds"])),
        flags=train_cmd.flags_from_config(config["train"]),
    shell:
        "python -m pipeline train --dataset {input.dataset:q} --prompts {input.prompts:q} "
        "--splits-dir {params.splits_dir:q} --features-dir {params.features_dir:q} --backbone {wildcards.backbone} "
        "--weights={params.weights:q} --tokenizer={params.tokenizer:q} --folds {params.folds} "
        "--out-dir {params.out_dir:q} {params.flags} --threads {threads} > {log} 2>&1"


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predictions=report(
            f"{OUT}/predictions/{{task}}/{{backbone}}/{{shots}}shot/predictions.csv",
            caption="../report/predictions.rst",
            category="Predictions",
            labels={"task": "{task}", "backbone": "{backbone}", "shots": "{shots}"},
        ),
    log:
        f"{OUT}/logs/predict/{{task}}/{{backbone}}/{{shots}}shot.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{task}}/{{backbone}}/{{shots}}shot.tsv"
    wildcard_constraints:
        backbone=r"[^/]+",
        shots=r"\d+",
    conda:
        "../../envs/model.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        features_dir=f"{OUT}/features/{{backbone}}",
        out_dir=f"{OUT}/predictions/{{task}}/{{backbone}}/{{shots}}shot",
        slide_ids=lambda wildcards, input: [Path(p).stem for p in input.features_5x],
        weights=config["features"]["weights"],
        tokenizer=config["features"]["tokenizer"],
        top_n=config["predict"]["top_n"],
        device=config["train"]["device"],
    shell:
        "python -m pipeline predict --checkpoints {input.checkpoints:q} --features-dir {params.features_dir:q} "
        "--backbone {wildcards.backbone} --weights={params.weights:q} --tokenizer={params.tokenizer:q} "
        "--slide-ids {params.slide_ids:q} --slides {input.slides:q} --top-n {params.top_n} "
        "--device {params.device} --threads {threads} --out-dir {params.out_dir:q} > {log} 2>&1"


rule train_all:
    input:
        expand(
            f"{OUT}/models/{{task}}/{{backbone}}/{{shots}}shot/results.csv",
            task=config["cohort"]["task"],
            backbone=config["features"]["backbone"],
            shots=config["cohort"]["shots"],
        ),


rule predict_all:
    input:
        expand(
            f"{OUT}/predictions/{{task}}/{{backbone}}/{{shots}}shot/predictions.csv",
            task=config["cohort"]["task"],
            backbone=config["features"]["backbone"],
            shots=config["cohort"]["shots"],
        ),
