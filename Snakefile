# medpipe: the MedicoSAM study as a Snakemake workflow.
#   snakemake --cores 2                      # the demo study (config/config.yaml)
#   snakemake --configfile config/study.yaml --profile profiles/slurm-a100   # the paper's study
from snakemake.utils import min_version, validate

min_version("9.0")


# The demo config is the default; `--configfile X` replaces it (rather than being merged into it),
# also inside cluster jobs.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"


rule all:
    input:
        lambda wildcards: TARGETS,
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/semantic.smk"
include: "workflow/rules/interactive.smk"
include: "workflow/rules/aggregate.smk"
