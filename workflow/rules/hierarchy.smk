# Hierarchy: 20x features linked to their 5x parents by level-0 coordinates, per slide and backbone, with a
# consistency report per slide and a cohort table per backbone. The logic is pipeline/hierarchy.py.


rule hierarchy:
    input:
        x5=out(layout.FEATURES_5X),  # made by `extract`, or by `take_features` from an extract_chunk job
        x20=out(layout.FEATURES_20X),
    output:
        h5=out(layout.HIERARCHICAL),
    log:
        main=f"{OUT}/logs/hierarchy/{{backbone}}/{{slide}}.log",
        # The consistency report is declared as a log, not an output: Snakemake deletes a failed job's outputs
        # but keeps its logs, so the report a failure message points to is still there to read.
        # check_hierarchy takes it as input like any output.
        report=out(layout.HIERARCHY_REPORT),
    benchmark:
        f"{OUT}/benchmarks/hierarchy/{{backbone}}/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        misaligned=config["hierarchy"]["misaligned"],
        seed=config["hierarchy"]["seed"],
        status=out(layout.STATUS_DIR),
    shell:
        "$HIVE_PYTHON -m pipeline hierarchy --features-5x {input.x5:q} --features-20x {input.x20:q} --out {output.h5:q} "
        "--report {log.report:q} --misaligned {params.misaligned} --seed {params.seed} "
        "--slide-id {wildcards.slide:q} --status-dir {params.status:q} --status-stage hierarchy_{wildcards.backbone:q} "
        "> {log.main:q} 2>&1"


rule check_hierarchy:
    input:
        # hierarchy_reports(wildcards): every usable slide's report for the backbone (common.smk)
        reports=hierarchy_reports,
    output:
        report(
            out(layout.HIERARCHY_SUMMARY),
            caption="../report/hierarchy_summary.rst",
            category="Hierarchy",
            labels={"backbone": "{backbone}"},
        ),
    log:
        f"{OUT}/logs/check_hierarchy/{{backbone}}.log",
    benchmark:
        f"{OUT}/benchmarks/check_hierarchy/{{backbone}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "$HIVE_PYTHON -m pipeline hierarchy-summary --reports {input.reports:q} --out {output:q} > {log:q} 2>&1"


rule hierarchy_all:
    input:
        expand(rules.check_hierarchy.output[0], backbone=list(BACKBONES)),
