# hive-wsi: whole-slide images to few-shot HiVE-MIL predictions. Thin on purpose: the rules live in
# workflow/rules/, the logic in the `pipeline` package (python -m pipeline --help).
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

# The DAG is built with the `pipeline` package of this checkout, as every job runs it (common.smk's shell prefix),
# whatever else is installed.
sys.path.insert(0, workflow.basedir)


configfile: f"{workflow.basedir}/config.yaml"


validate(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gdc.smk"
include: "workflow/rules/slides.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/reports.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/hierarchy.smk"
include: "workflow/rules/model.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


onsuccess:
    shell(status_table_command())


onerror:
    shell(status_table_command())
