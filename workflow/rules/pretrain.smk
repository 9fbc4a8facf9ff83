# HLSS pretraining: for every `{vlm}_hlss` backbone listed without weights, a tile pool of the pretraining slides'
# 20x patches, then a residual adapter (and heads) trained on the VLM's image tower; its checkpoint is the weights
# of `{vlm}_hlss`, which extraction, text embeddings, training and prediction then use. The kNN and zero-shot
# evaluation compares the VLM's features with the adapted ones on each labelled task. Logic: pipeline/pretrain/.


rule pretrain_tiles:
    input:
        sheet=out(layout.SHEET),
        slides=lambda wildcards: [slide_file(s) for s in pretrain_ids()],
        patches=lambda wildcards: expand(rules.patch.output.h5, slide=pretrain_ids()),
    output:
        out(layout.PRETRAIN_TILES),
    log:
        f"{OUT}/logs/pretrain/tiles.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain/tiles.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wildcards: 10 + len(pretrain_ids()) // 10,
    params:
        tiles=PRE["tiles_per_slide"],
        seed=PRE["seed"],
        reader=READER,
    shell:
        "$HIVE_PYTHON -m pipeline pretrain-tiles --sheet {input.sheet:q} --slides {input.slides:q} "
        "--patches {input.patches:q} --tiles-per-slide {params.tiles} --seed {params.seed} --reader {params.reader} "
        "--out {output:q} > {log:q} 2>&1"


rule pretrain:
    input:
        tiles=rules.pretrain_tiles.output[0],
        attributes=lambda wildcards: attribute_file(),
    output:
        checkpoint=out(layout.HLSS_CHECKPOINT),
        losses=out(layout.HLSS_LOSSES),
        curve=report(
            out(layout.HLSS_CURVE),
            caption="../report/pretrain_curve.rst",
            category="Pretraining",
            labels={"backbone": "{backbone}", "plot": "loss"},
        ),
    log:
        f"{OUT}/logs/pretrain/{{backbone}}.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain/{{backbone}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: PRE["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=600,
    params:
        vlm=lambda wildcards: HLSS[wildcards.backbone],
        weights=lambda wildcards: BACKBONES[HLSS[wildcards.backbone]]["weights"],
        tokenizer=lambda wildcards: BACKBONES[HLSS[wildcards.backbone]]["tokenizer"],
        state=lambda wildcards: out(layout.HLSS_STATE, backbone=wildcards.backbone)[0],
        seed=config["features"]["seed"],
        flags=pw.pretrain_flags(PRE),
        device=PRE["device"],
    shell:
        "$HIVE_PYTHON -m pipeline pretrain --tiles {input.tiles:q} --attributes {input.attributes:q} "
        "--backbone {params.vlm:q} --weights={params.weights:q} --tokenizer={params.tokenizer:q} --seed {params.seed} "
        "--device {params.device} --threads {threads} {params.flags} --state {params.state:q} "
        "--out {output.checkpoint:q} --losses {output.losses:q} --curve {output.curve:q} > {log:q} 2>&1"


# The features of an HLSS backbone pretrained with its tower frozen are its VLM's features through the adapter:
# one job per backbone adapts the cached files instead of decoding every slide again (identical features, tested).
if CHUNKED:

    ruleorder: adapt_features > take_features

else:

    ruleorder: adapt_features > extract


rule adapt_features:
    input:
        checkpoint=out(layout.HLSS_CHECKPOINT),
        vlm=lambda wildcards: adapt_files(HLSS[wildcards.backbone]),
    output:
        adapt_files("{backbone}") if ADAPTED else [],
    log:
        f"{OUT}/logs/adapt_features/{{backbone}}.log",
    benchmark:
        f"{OUT}/benchmarks/adapt_features/{{backbone}}.tsv"
    wildcard_constraints:
        backbone=ws.name_regex(ADAPTED) if ADAPTED else "(?!)",
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        tokenizer=lambda wildcards: BACKBONES[HLSS[wildcards.backbone]]["tokenizer"],
    shell:
        "$HIVE_PYTHON -m pipeline adapt-features --backbone {wildcards.backbone:q} --weights {input.checkpoint:q} "
        "--tokenizer={params.tokenizer:q} --vlm-files {input.vlm:q} --out {output:q} > {log:q} 2>&1"


rule hlss_eval:
    input:
        unpack(eval_inputs),
    output:
        csv=out(layout.HLSS_EVAL),
        md=report(
            out(layout.HLSS_EVAL_MD),
            caption="../report/pretrain_eval.rst",
            category="Pretraining",
            labels={"backbone": "{backbone}", "task": "{task}", "table": "kNN and zero-shot"},
        ),
    log:
        f"{OUT}/logs/pretrain/eval_{{backbone}}_{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/pretrain/eval_{{backbone}}_{{task}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        before=lambda wildcards: HLSS[wildcards.backbone],
        task_type=lambda wildcards: TASKS[wildcards.task]["type"],
        tree=lambda wildcards: TASKS[wildcards.task]["tree_args"],
        k=PRE["knn_k"],
        folds=PRE["knn_folds"],
        patches=PRE["knn_patches_per_slide"],
        seed=PRE["seed"],
    shell:
        "$HIVE_PYTHON -m pipeline hlss-eval --task {wildcards.task:q} --task-type {params.task_type} "
        "--label-tree {params.tree:q} --dataset {input.dataset:q} --prompts {input.prompts:q} "
        "--before {params.before:q} --after {wildcards.backbone:q} "
        "--before-20x {input.before_20x:q} --after-20x {input.after_20x:q} "
        "--before-5x {input.before_5x:q} --after-5x {input.after_5x:q} "
        "--before-hierarchical {input.before_hierarchical:q} --after-hierarchical {input.after_hierarchical:q} "
        "--before-text {input.before_text:q} --after-text {input.after_text:q} "
        "--k {params.k} --folds {params.folds} --patches-per-slide {params.patches} --seed {params.seed} "
        "--threads {threads} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"


rule pretrain_all:
    input:
        expand(rules.pretrain.output.checkpoint, backbone=PRETRAINED),
        expand(rules.hlss_eval.output.csv, backbone=list(HLSS), task=pw.evaluated_tasks(TASKS)),
