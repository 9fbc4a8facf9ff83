# Slides: the demo cohort, tissue segmentation and aligned 5x/20x patching.


rule demo_slide:
    output:
        out(layout.DEMO_SLIDE),
    log:
        f"{OUT}/logs/demo_slide/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/demo_slide/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=config["demo"]["seed"],
        size=config["demo"]["size_px"],
        mpp=config["demo"]["mpp"],
        classes=" ".join(config["demo"]["classes"]),
        per_class=config["demo"]["slides_per_class"],
    shell:
        "$HIVE_PYTHON -m pipeline demo slide --slide-id {wildcards.slide:q} --out {output:q} --seed {params.seed} "
        "--size {params.size} --mpp {params.mpp} --classes {params.classes} "
        "--slides-per-class {params.per_class} > {log:q} 2>&1"


rule cohort_sheet:
    input:
        sheet_inputs,
    output:
        out(layout.SHEET),
    log:
        f"{OUT}/logs/cohort_sheet/sheet.log",
    benchmark:
        f"{OUT}/benchmarks/cohort_sheet/sheet.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        cmd=ws.sheet_command(config, OUT, "$HIVE_PYTHON"),
    shell:
        "{params.cmd} --out {output:q} > {log:q} 2>&1"


rule segment:
    input:
        slide=slide_path,
    output:
        mask=out(layout.TISSUE_MASK),
        geojson=out(layout.TISSUE_GEOJSON),
        stats=out(layout.TISSUE_STATS),
        qc=report(
            out(layout.QC_TISSUE),
            caption="../report/qc_tissue.rst",
            category="Quality control",
            subcategory="Tissue segmentation",
            labels={"slide": "{slide}", "figure": "tissue"},
        ),
    log:
        f"{OUT}/logs/segment/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/segment/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        overrides=mpp_override_args,
        tissue=flags.tissue_flags(config["tissue"]),
        reader=READER,
        status=out(layout.STATUS_DIR),
    shell:
        "$HIVE_PYTHON -m pipeline segment --slide {input.slide:q} --slide-id {wildcards.slide:q} {params.overrides} "
        "--reader {params.reader} "
        "--status-dir {params.status:q} --mask {output.mask:q} --geojson {output.geojson:q} --stats {output.stats:q} "
        "--qc {output.qc:q} {params.tissue} > {log:q} 2>&1"


rule patch:
    input:
        slide=slide_path,
        geojson=rules.segment.output.geojson,
        stats=rules.segment.output.stats,
    output:
        h5=out(layout.PATCHES),
        qc=report(
            out(layout.QC_PATCHES),
            caption="../report/qc_patches.rst",
            category="Quality control",
            subcategory="Patching",
            labels={"slide": "{slide}", "figure": "patch grid"},
        ),
    log:
        f"{OUT}/logs/patch/{{slide}}.log",
    benchmark:
        f"{OUT}/benchmarks/patch/{{slide}}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        overrides=mpp_override_args,
        size=config["patching"]["patch_size"],
        frac=config["patching"]["min_tissue_fraction"],
        reader=READER,
        status=out(layout.STATUS_DIR),
    shell:
        "$HIVE_PYTHON -m pipeline patch --slide {input.slide:q} --slide-id {wildcards.slide:q} {params.overrides} "
        "--reader {params.reader} "
        "--status-dir {params.status:q} --geojson {input.geojson:q} --tissue-stats {input.stats:q} "
        "--out {output.h5:q} --qc {output.qc:q} --patch-size {params.size} "
        "--min-tissue-fraction {params.frac} > {log:q} 2>&1"


rule segment_all:
    input:
        per_slide(rules.segment.output.geojson),


rule patch_all:
    input:
        per_slide(rules.patch.output.h5),
        rules.cohort_sheet.output,
