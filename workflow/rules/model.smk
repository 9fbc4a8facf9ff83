# Model: every registered method of every task trained and evaluated per fold (one job per task / backbone / shot
# count / method), the methods' tables summarised per run and compared across backbones and shot counts per task,
# then predictions from each method's fold checkpoints. The logic is pipeline/training/. Input functions
# `train_inputs`, `method_summaries`, `task_results` and `predict_inputs` are defined in common.smk.


rule train:
    input:
        unpack(train_inputs),
    output:
        summary=out(layout.METHOD_SUMMARY),
        predictions=out(layout.METHOD_PREDICTIONS),
        checkpoints=expand(out(layout.CHECKPOINT), k=range(config["cohort"]["folds"]), allow_missing=True),
        attributes=out(layout.METHOD_ATTRIBUTES),
        curves=directory(out(layout.METHOD_CURVES)),
        plots=report(
            directory(out(layout.METHOD_PLOTS)),
            patterns=["{name}.png"],
            caption="../report/training_plots.rst",
            category="Training",
            subcategory="{task}",
            labels={"backbone": "{backbone}", "run": "{run}", "method": "{method}", "plot": "{name}"},
        ),
    log:
        f"{OUT}/logs/train/{{task}}/{{backbone}}/{{run}}/{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/train/{{task}}/{{backbone}}/{{run}}/{{method}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        task_type=lambda wildcards: TASKS[wildcards.task]["type"],
        tree=lambda wildcards: TASKS[wildcards.task]["tree_args"],
        shots=lambda wildcards: ws.shots_of_run(TASKS[wildcards.task], wildcards.run),
        labels=lambda wildcards: ws.survival_labels(TASKS[wildcards.task]),
        weights=backbone_param("weights"),
        tokenizer=backbone_param("tokenizer"),
        flags=flags.train_flags(config["train"]),
        method_settings=lambda wildcards: flags.method_settings_flags(METHOD_SETTINGS.get(wildcards.method, {})),
        task_settings=lambda wildcards: flags.task_settings_flags(TASKS[wildcards.task]["settings"]),
        fine_grained=lambda wildcards, input: flags.fine_grained_flags(dict(input.items())),
    shell:
        "$HIVE_PYTHON -m pipeline train --task {wildcards.task:q} --task-type {params.task_type} "
        "--method {wildcards.method:q} --label-tree {params.tree:q} --labels {params.labels:q} --dataset {input.dataset:q} "
        "--prompts {input.prompts:q} --splits {input.splits:q} "
        "--features-5x {input.features_5x:q} --hierarchical {input.hierarchical:q} --text-embeddings {input.text:q} "
        "--backbone {wildcards.backbone:q} --weights={params.weights:q} --tokenizer={params.tokenizer:q} "
        "--shots={params.shots:q} {params.fine_grained} --summary {output.summary:q} "
        "--predictions {output.predictions:q} --attributes {output.attributes:q} --checkpoints {output.checkpoints:q} "
        "--curves {output.curves:q} --plots {output.plots:q} {params.flags} {params.method_settings} "
        "{params.task_settings} --threads {threads} "
        "> {log:q} 2>&1"


rule summarize:
    input:
        summaries=method_summaries,
    output:
        results=report(
            out(layout.RESULTS),
            caption="../report/results_comparison.rst",
            category="Results",
            labels={"task": "{task}", "backbone": "{backbone}", "run": "{run}", "table": "results"},
        ),
        comparison=out(layout.RUN_COMPARISON),
        comparison_csv=out(layout.RUN_COMPARISON_CSV),
        summary=out(layout.RUN_SUMMARY),
    log:
        f"{OUT}/logs/summarize/{{task}}/{{backbone}}/{{run}}.log",
    benchmark:
        f"{OUT}/benchmarks/summarize/{{task}}/{{backbone}}/{{run}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        task_type=lambda wildcards: TASKS[wildcards.task]["type"],
    shell:
        "$HIVE_PYTHON -m pipeline summarize --summaries {input.summaries:q} --task-type {params.task_type} "
        "--title {wildcards.task:q}/{wildcards.backbone:q}/{wildcards.run:q} --results {output.results:q} "
        "--comparison {output.comparison:q} --comparison-csv {output.comparison_csv:q} --summary {output.summary:q} "
        "> {log:q} 2>&1"


rule compare:
    input:
        results=task_results,
    output:
        md=report(
            out(layout.TASK_COMPARISON),
            caption="../report/results_comparison.rst",
            category="Results",
            labels={"task": "{task}", "table": "methods x backbones x runs"},
        ),
        csv=out(layout.TASK_COMPARISON_CSV),
    log:
        f"{OUT}/logs/compare/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/compare/{{task}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        task_type=lambda wildcards: TASKS[wildcards.task]["type"],
    shell:
        "$HIVE_PYTHON -m pipeline compare --results {input.results:q} --task-type {params.task_type} "
        "--title {wildcards.task:q} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predictions=report(
            out(layout.PREDICTIONS),
            caption="../report/predictions.rst",
            category="Predictions",
            labels={"task": "{task}", "backbone": "{backbone}", "run": "{run}", "method": "{method}"},
        ),
        gallery=report(
            directory(out(layout.PREDICT_GALLERY)),
            patterns=["{name}.png"],
            caption="../report/heatmaps.rst",
            category="Interpretability",
            subcategory="{task}",
            labels={"backbone": "{backbone}", "run": "{run}", "method": "{method}", "map": "{name}"},
        ),
        unscored=out(layout.PREDICT_UNSCORED),
        top_patches=directory(out(layout.PREDICT_TOP_PATCHES)),
        overlays=directory(out(layout.PREDICT_OVERLAYS)),
        heatmaps=directory(out(layout.PREDICT_HEATMAPS)),
    log:
        f"{OUT}/logs/predict/{{task}}/{{backbone}}/{{run}}/{{method}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{task}}/{{backbone}}/{{run}}/{{method}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        top_n=config["predict"]["top_n"],
        heatmap=flags.heatmap_flags(config["predict"]),
        device=config["train"]["device"],
    shell:
        "$HIVE_PYTHON -m pipeline predict --checkpoints {input.checkpoints:q} --features-5x {input.features_5x:q} "
        "--hierarchical {input.hierarchical:q} --backbone {wildcards.backbone:q} --slides {input.slides:q} "
        "--patches {input.patches:q} --top-n {params.top_n} {params.heatmap} --device {params.device:q} --threads {threads} "
        "--predictions {output.predictions:q} --unscored {output.unscored:q} --top-patches {output.top_patches:q} "
        "--overlays {output.overlays:q} --heatmaps {output.heatmaps:q} --gallery {output.gallery:q} > {log:q} 2>&1"


rule train_all:
    input:
        every_run(layout.RESULTS),
        expand(rules.compare.output.md, task=list(TASKS)),


rule predict_all:
    input:
        every_run(layout.PREDICTIONS),
