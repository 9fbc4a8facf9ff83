# Cohort: dataset.csv from the cohort sheet and the per-slide files, patient-level few-shot splits in HiVE-MIL's
# format per task and shot count, k-fold cross-validation over patients for survival tasks, and each task's checked
# text prompts. Input functions `dataset_inputs` (named
# inputs sheet, patches, features_5x, hierarchical) and `prompt_file` are defined in common.smk.


rule dataset:
    input:
        unpack(dataset_inputs),
    output:
        dataset=out(layout.DATASET),
        dropped=out(layout.DROPPED),
    log:
        f"{OUT}/logs/cohort/dataset.log",
    benchmark:
        f"{OUT}/benchmarks/cohort/dataset.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        labels=ws.dataset_labels(config),
        status=out(layout.STATUS_DIR),
        min_patches=config["cohort"]["min_patches"],
        survival="--survival" if ws.has_survival(config) else "",
    shell:
        "$HIVE_PYTHON -m pipeline dataset --sheet {input.sheet:q} --patches {input.patches:q} "
        "--features-5x {input.features_5x:q} --hierarchical {input.hierarchical:q} --labels {params.labels:q} "
        "--status-dir {params.status:q} --min-patches {params.min_patches} {params.survival} "
        "--out {output.dataset:q} --dropped {output.dropped:q} > {log:q} 2>&1"


rule splits:
    input:
        dataset=rules.dataset.output.dataset,
    output:
        splits=expand(out(layout.SPLIT), k=range(config["cohort"]["folds"]), allow_missing=True),
        meta=out(layout.SPLITS_META),
    log:
        f"{OUT}/logs/splits/{{task}}_{{split}}.log",
    benchmark:
        f"{OUT}/benchmarks/splits/{{task}}_{{split}}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        # the task type's split command and its flags (few-shot draws, survival folds, ...): its module's choice
        split_command=lambda wildcards: ws.split_command(TASKS[wildcards.task], config["cohort"], wildcards.split),
    shell:
        "$HIVE_PYTHON -m pipeline {params.split_command} --dataset {input.dataset:q} --out {output.splits:q} "
        "--meta {output.meta:q} > {log:q} 2>&1"


rule check_prompts:
    input:
        prompts=prompt_file,
    output:
        out(layout.PROMPTS),
    log:
        f"{OUT}/logs/check_prompts/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/check_prompts/{{task}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        labels=lambda wildcards: TASKS[wildcards.task]["labels"],
    shell:
        "$HIVE_PYTHON -m pipeline check-prompts --prompts {input.prompts:q} --labels {params.labels:q} "
        "--out {output:q} > {log:q} 2>&1"


rule splits_all:
    input:
        [
            expand(out(layout.SPLIT), task=name, split=t["splits"], k=range(config["cohort"]["folds"]))
            for name, t in TASKS.items()
        ],
        [expand(out(layout.SPLITS_META), task=name, split=t["splits"]) for name, t in TASKS.items()],
        expand(rules.check_prompts.output[0], task=list(TASKS)),
