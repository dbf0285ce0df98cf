# medpipe: the MedicoSAM study as a Snakemake workflow.
#   snakemake --cores 2                      # the demo study (config/config.yaml)
#   snakemake --configfile config/study.yaml --profile profiles/slurm-a100   # the paper's study
#
# The config is validated (and its defaults filled) by medpipe against the schema packaged with it,
# workflow/schemas/config.schema.yaml (workflow/rules/common.smk), before any rule is defined.
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default; `--configfile X` replaces it (rather than being merged into it),
# also inside cluster jobs.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


onstart:
    write_config_snapshot()


rule all:
    input:
        all_targets(),
    default_target: True


include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/semantic.smk"
include: "workflow/rules/interactive.smk"
include: "workflow/rules/aggregate.smk"
