# Reports and descriptions (tasks with a FiVE method): each case's pathology report as text (demo: generated with
# the slides; gdc: the cases' open Pathology Report PDFs; csv: a case_id,text table), then per task the answers to
# its question set (an LLM behind an OpenAI-compatible endpoint, cached per case; or a ready-made table, as the
# demo's precomputed descriptions). The logic is pipeline/reports/ and pipeline/descriptions/.
from pipeline.descriptions.questions import resolve_question_file

REPORTS_SOURCE = ws.reports_source(config)  # refuses a source that cannot work, before any job runs
DESCRIBED = ws.description_tasks(config)

if REPORTS_SOURCE == "gdc":

    localrules:
        reports,  # the GDC's report PDFs need the internet, which cluster nodes often lack


rule demo_reports:
    input:
        questions=str(resolve_question_file("demo")),
    output:
        reports=out(layout.DEMO_REPORTS),
        descriptions=out(layout.DEMO_DESCRIPTIONS),
    log:
        f"{OUT}/logs/demo_reports/reports.log",
    benchmark:
        f"{OUT}/benchmarks/demo_reports/reports.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        seed=config["demo"]["seed"],
        classes=" ".join(config["demo"]["classes"]),
        per_class=config["demo"]["slides_per_class"],
    shell:
        "$HIVE_PYTHON -m pipeline demo reports --out {output.reports:q} --descriptions-out {output.descriptions:q} "
        "--questions {input.questions:q} --classes {params.classes} --slides-per-class {params.per_class} "
        "--seed {params.seed} > {log:q} 2>&1"


rule reports:
    input:
        sheet=out(layout.SHEET),
        table=ws.reports_table(config, OUT),
    output:
        index=out(layout.REPORTS_INDEX),
        texts=directory(out(layout.REPORTS_TEXTS)),
    log:
        f"{OUT}/logs/reports/reports.log",
    benchmark:
        f"{OUT}/benchmarks/reports/reports.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=240,
        gdc_conn=1,
    params:
        source=REPORTS_SOURCE,
        table=lambda wildcards, input: flags.report_table_flags(input.table),
        pdf_dir=out(layout.REPORTS_PDF),  # the GDC's report PDFs: a download cache kept across reruns, not an output
        client=gdc_wiring.client_args(config["gdc"]),
    shell:
        "$HIVE_PYTHON -m pipeline reports --source {params.source} --sheet {input.sheet:q} {params.table} "
        "--texts {output.texts:q} --index {output.index:q} --pdf-dir {params.pdf_dir:q} {params.client} > {log:q} 2>&1"


rule descriptions:
    input:
        unpack(lambda wildcards: ws.description_inputs(config, TASKS[wildcards.task], OUT)),
    output:
        questions=out(layout.QUESTIONS),
        descriptions=out(layout.DESCRIPTIONS),
        failed=out(layout.DESCRIPTIONS_FAILED),
    log:
        f"{OUT}/logs/descriptions/{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/descriptions/{{task}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=1440,
    params:
        labels=lambda wildcards: TASKS[wildcards.task]["labels"],
        source=lambda wildcards, input: flags.description_source_flags(
            dict(input.items()), config["llm"], out(layout.DESCRIPTIONS_CACHE, task=wildcards.task)[0]
        ),
    shell:
        "$HIVE_PYTHON -m pipeline descriptions --questions {input.questions:q} --labels {params.labels:q} "
        "{params.source} --out-questions {output.questions:q} --out {output.descriptions:q} "
        "--failures {output.failed:q} > {log:q} 2>&1"


# Every FiVE task's descriptions, and the reports index (the demo's descriptions are precomputed, so only this
# target asks for its reports stage).
rule descriptions_all:
    input:
        expand(rules.descriptions.output.descriptions, task=DESCRIBED),
        [rules.reports.output.index] if DESCRIBED else [],
