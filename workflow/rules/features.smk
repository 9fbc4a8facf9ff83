# Features: 5x and 20x patch features per slide for every configured backbone (only the kept patches decoded),
# and each task's prompt texts encoded by the same backbone (zero-shot texts). The logic is pipeline/features/.

FEAT = config["features"]


EXTRACT_FLAGS = flags.extract_flags(FEAT, READER)
EXTRACT_THREADS = flags.extract_threads(FEAT)


if not CHUNKED:

    rule extract:
        input:
            slide=slide_path,
            patches=rules.patch.output.h5,
            hlss=hlss_checkpoint,
        output:
            x5=out(layout.FEATURES_5X),
            x20=out(layout.FEATURES_20X),
        log:
            f"{OUT}/logs/extract/{{backbone}}/{{slide}}.log",
        benchmark:
            f"{OUT}/benchmarks/extract/{{backbone}}/{{slide}}.tsv"
        conda:
            "../../envs/features.yaml"
        threads: EXTRACT_THREADS
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=120,
        params:
            weights=backbone_param("weights"),
            tokenizer=backbone_param("tokenizer"),
            options=EXTRACT_FLAGS,
            status=out(layout.STATUS_DIR),
        shell:
            "$HIVE_PYTHON -m pipeline extract --slide {input.slide:q} --slide-id {wildcards.slide:q} "
            "--patches {input.patches:q} --backbone {wildcards.backbone:q} --weights={params.weights:q} "
            "--tokenizer={params.tokenizer:q} {params.options} --threads {threads} "
            "--status-dir {params.status:q} --out-5x {output.x5:q} --out-20x {output.x20:q} --no-progress "
            "> {log:q} 2>&1"

else:

    # features.slides_per_job > 1 or shared_decode: a job per chunk of slides, every backbone from one decode
    # (pipeline/features/chunks.py), then each slide's files linked into place by a light local job.
    rule extract_chunk:
        input:
            slides=lambda wildcards: [slide_file(s) for s in extract_chunks()[wildcards.chunk]],
            patches=lambda wildcards: expand(rules.patch.output.h5, slide=extract_chunks()[wildcards.chunk]),
            hlss=hlss_checkpoints(BACKBONES),
        output:
            directory(out(layout.EXTRACT_CHUNK)),
        log:
            f"{OUT}/logs/extract/chunks/{{chunk}}.log",
        benchmark:
            f"{OUT}/benchmarks/extract/chunks/{{chunk}}.tsv"
        conda:
            "../../envs/features.yaml"
        threads: EXTRACT_THREADS
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=lambda wildcards: 120 * len(extract_chunks()[wildcards.chunk]) * (len(BACKBONES) - len(ADAPTED)),
        params:
            ids=lambda wildcards: extract_chunks()[wildcards.chunk],
            backbones=flags.chunk_backbone_flags({k: v for k, v in BACKBONES.items() if k not in ADAPTED}),
            options=EXTRACT_FLAGS,
            status=out(layout.STATUS_DIR),
        shell:
            "$HIVE_PYTHON -m pipeline extract-chunk --slides {input.slides:q} --slide-ids {params.ids:q} "
            "--patches {input.patches:q} {params.backbones} {params.options} --threads {threads} "
            "--status-dir {params.status:q} --out-dir {output:q} --no-progress > {log:q} 2>&1"

    localrules:
        take_features,

    rule take_features:
        input:
            chunk=lambda wildcards: out(layout.EXTRACT_CHUNK).format(chunk=chunk_of_slide(wildcards.slide)),
        output:
            x5=out(layout.FEATURES_5X),
            x20=out(layout.FEATURES_20X),
        log:
            f"{OUT}/logs/extract/{{backbone}}/{{slide}}.log",
        benchmark:
            f"{OUT}/benchmarks/extract/{{backbone}}/{{slide}}.tsv"
        conda:
            "../../envs/preprocess.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        params:
            status=out(layout.STATUS_DIR),
        shell:
            "$HIVE_PYTHON -m pipeline take-features --chunk-dir {input.chunk:q} --backbone {wildcards.backbone:q} "
            "--slide-id {wildcards.slide:q} --status-dir {params.status:q} --out-5x {output.x5:q} "
            "--out-20x {output.x20:q} > {log:q} 2>&1"


rule text_embeddings:
    input:
        prompts=rules.check_prompts.output[0],
        hlss=hlss_checkpoint,
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
        lambda wildcards: expand(out(layout.FEATURES_5X), slide=extract_ids(), backbone=list(BACKBONES)),
        lambda wildcards: expand(out(layout.FEATURES_20X), slide=extract_ids(), backbone=list(BACKBONES)),
        expand(rules.text_embeddings.output[0], backbone=list(BACKBONES), task=list(TASKS)),
