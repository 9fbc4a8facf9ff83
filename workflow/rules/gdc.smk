# GDC source: the query checkpoint writes manifest.tsv and the labelled cohort sheet; then one verified,
# resumable download per slide, at most `gdc.concurrent_downloads` at once (resource gdc_conn).
from pipeline.wiring import gdc as gdc_wiring
from pipeline.wiring import layout

GDC = config["gdc"]
# Paths from pipeline.wiring.layout, spelled out here rather than by common.smk's out(): this file is also included
# alone (with OUT defined), as tests/test_gdc.py does.
GDC_STATUS = f"{OUT}/{layout.STATUS_DIR}"


# $HIVE_PYTHON is the interpreter common.smk's shell prefix sets; `python` where this file is included alone.


# Both need the internet, which cluster compute nodes often lack; the query is light, downloads are I/O.
localrules:
    gdc_query,
    gdc_download_all,


if GDC["local_downloads"]:

    localrules:
        gdc_download,


# `--resources gdc_conn=N` on the command line (or in a profile) wins over the config value.
if "gdc_conn" not in workflow.global_resources:
    workflow.register_resource("gdc_conn", GDC["concurrent_downloads"])


checkpoint gdc_query:
    input:
        gdc_wiring.query_inputs(GDC),
    output:
        manifest=f"{OUT}/{layout.GDC_MANIFEST}",
        cohort=f"{OUT}/{layout.GDC_COHORT}",
        summary=f"{OUT}/{layout.GDC_SUMMARY}",
    log:
        f"{OUT}/logs/gdc_query/query.log",
    benchmark:
        f"{OUT}/benchmarks/gdc_query/query.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
        gdc_conn=1,
    params:
        task=gdc_wiring.query_args(GDC),
        client=gdc_wiring.client_args(GDC),
    shell:
        "${{HIVE_PYTHON:-python}} -m pipeline gdc-query {params.task} {params.client} --out-manifest {output.manifest:q} "
        "--out-cohort {output.cohort:q} --out-summary {output.summary:q} > {log:q} 2>&1"


rule gdc_download:
    input:
        # ancient: a rerun of the query must not make every downloaded slide look outdated
        manifest=ancient(rules.gdc_query.output.manifest),
    output:
        gdc_wiring.slide_pattern(GDC),
    log:
        f"{OUT}/logs/gdc_download/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/gdc_download/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=240,
        gdc_conn=1,
    params:
        client=gdc_wiring.client_args(GDC),
        status=GDC_STATUS,
    shell:
        "${{HIVE_PYTHON:-python}} -m pipeline gdc-download --manifest {input.manifest:q} --slide {wildcards.slide:q} --out {output:q} "
        "--status-dir {params.status:q} {params.client} > {log:q} 2>&1"


# Every slide of the query's cohort sheet (the lambda waits for the checkpoint). Downstream rules key on the
# same ids: gdc_wiring.cohort_slide_ids(checkpoints.gdc_query.get().output.cohort).
rule gdc_download_all:
    input:
        lambda wc: expand(
            rules.gdc_download.output[0],
            slide=gdc_wiring.cohort_slide_ids(checkpoints.gdc_query.get().output.cohort),
        ),
