# Cohort: dataset.csv from the cohort sheet and the per-slide files, patient-level few-shot splits in HiVE-MIL's
# format, and the checked text prompts. Input functions `dataset_inputs` (named inputs sheet, patches,
# features_5x, hierarchical) and `prompt_file` are defined in common.smk.


rule dataset:
    input:
        unpack(dataset_inputs),
    output:
        dataset=f"{OUT}/cohort/dataset.csv",
        dropped=f"{OUT}/cohort/dropped.csv",
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
        labels=config["cohort"]["labels"],
    shell:
        "python -m pipeline dataset --sheet {input.sheet:q} --patches {input.patches:q} "
        "--features-5x {input.features_5x:q} --hierarchical {input.hierarchical:q} --labels {params.labels:q} "
        "--out {output.dataset:q} --dropped {output.dropped:q} > {log} 2>&1"


rule splits:
    input:
        dataset=rules.dataset.output.dataset,
    output:
        splits=expand(
            "{out}/splits/{task}_{shots}/splits_{k}.csv",
            out=OUT,
            task=config["cohort"]["task"],
            shots=config["cohort"]["shots"],
            k=range(config["cohort"]["folds"]),
        ),
        meta=expand(
            "{out}/splits/{task}_{shots}/splits_meta.json",
            out=OUT,
            task=config["cohort"]["task"],
            shots=config["cohort"]["shots"],
        ),
    log:
        f"{OUT}/logs/cohort/splits.log",
    benchmark:
        f"{OUT}/benchmarks/cohort/splits.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_dir=lambda wildcards, output: output.splits[0].rsplit("/", 2)[0],
        task=config["cohort"]["task"],
        shots=config["cohort"]["shots"],
        folds=config["cohort"]["folds"],
        val_frac=config["cohort"]["val_frac"],
        test_frac=config["cohort"]["test_frac"],
        seed=config["cohort"]["seed"],
        labels=config["cohort"]["labels"],
        import_from=config["cohort"]["import_splits"],
        overlap="--allow-case-overlap" if config["cohort"]["allow_case_overlap"] else "",
    shell:
        "python -m pipeline splits --dataset {input.dataset:q} --out-dir {params.out_dir:q} "
        "--task {params.task:q} --shots {params.shots} --folds {params.folds} --val-frac {params.val_frac} "
        "--test-frac {params.test_frac} --seed {params.seed} --labels {params.labels:q} "
        "--import-from {params.import_from:q} {params.overlap} > {log} 2>&1"


rule check_prompts:
    input:
        prompts=prompt_file,
    output:
        f"{OUT}/cohort/prompts.json",
    log:
        f"{OUT}/logs/cohort/check_prompts.log",
    benchmark:
        f"{OUT}/benchmarks/cohort/check_prompts.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        labels=config["cohort"]["labels"],
    shell:
        "python -m pipeline check-prompts --prompts {input.prompts:q} --labels {params.labels:q} "
        "--out {output:q} > {log} 2>&1"


rule splits_all:
    input:
        rules.splits.output.splits,
        rules.splits.output.meta,
        rules.check_prompts.output,
