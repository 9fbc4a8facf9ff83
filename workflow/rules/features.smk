# Features: 5x and 20x patch features per slide for every configured backbone (one region read per 5x parent),
# and each task's prompt texts encoded by the same backbone (zero-shot texts). The logic is pipeline/features/.

FEAT = config["features"]


rule extract:
    input:
        slide=slide_path,
        patches=rules.patch.output.h5,
    output:
        x5=out(layout.FEATURES_5X),
        x20=out(layout.FEATURES_20X),
    log:
        f"{OUT}/logs/extract/{{backbone}}/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/extract/{{backbone}}/{{slide}}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: max(1, FEAT["num_workers"])
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        weights=backbone_param("weights"),
        tokenizer=backbone_param("tokenizer"),
        batch=FEAT["batch_size"],
        workers=FEAT["num_workers"],
        device=FEAT["device"],
        on_error=FEAT["on_read_error"],
        seed=FEAT["seed"],
        status=f"{OUT}/status",
    shell:
        "$HIVE_PYTHON -m pipeline extract --slide {input.slide:q} --slide-id {wildcards.slide:q} "
        "--patches {input.patches:q} --backbone {wildcards.backbone:q} --weights={params.weights:q} "
        "--tokenizer={params.tokenizer:q} --device {params.device:q} --seed {params.seed} "
        "--batch-size {params.batch} --workers {params.workers} --on-read-error {params.on_error} "
        "--status-dir {params.status:q} --out-5x {output.x5:q} --out-20x {output.x20:q} --no-progress "
        "> {log:q} 2>&1"


rule text_embeddings:
    input:
        prompts=rules.check_prompts.output[0],
    output:
        out(layout.TEXT_EMBEDDINGS),
    log:
        f"{OUT}/logs/text_embeddings/{{backbone}}/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/text_embeddings/{{backbone}}/{{task}}.tsv"
    conda:
        "../../envs/features.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        weights=backbone_param("weights"),
        tokenizer=backbone_param("tokenizer"),
        seed=FEAT["seed"],
        labels=lambda wildcards: TASKS[wildcards.task]["labels"],
    shell:
        "$HIVE_PYTHON -m pipeline text-embed --prompts {input.prompts:q} --backbone {wildcards.backbone:q} "
        "--weights={params.weights:q} --tokenizer={params.tokenizer:q} --seed {params.seed} --device cpu "
        "--labels {params.labels:q} --out {output:q} > {log:q} 2>&1"


rule extract_all:
    input:
        per_slide(rules.extract.output.x5, backbone=list(BACKBONES)),
        per_slide(rules.extract.output.x20, backbone=list(BACKBONES)),
        expand(rules.text_embeddings.output[0], backbone=list(BACKBONES), task=list(TASKS)),
