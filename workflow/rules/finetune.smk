# Finetune stage: corpus + base model -> training folder (resumable) -> SAM-compatible export ->
# compatibility checks -> compatibility table (paper Tab. 1).
#
#   {R}/finetune/<run>/          latest.pt, best.pt, metrics.csv, tensorboard/, training.json (the rule's output)
#   {R}/models/<run>.pth         flat segment_anything state dict (+ <run>.decoder.pth when e_sem, <run>.sha256)
#   {R}/models/<run>.compat.json and {R}/tables/compatibility.tsv
#
# Checkpoints are not declared outputs, so Snakemake never deletes them after a failed or killed
# job: rerunning the rule resumes from latest.pt.

# ---- input functions of the finetune stage (the lead may move them to common.smk) -------------
import json as _ft_json

from medpipe.finetune.settings import resolve_run as _ft_resolve_run
from medpipe.models.names import checkpoint_label as _ft_checkpoint_label

FINETUNE_RUNS = list(config["finetune"]["runs"])
FINETUNE_ESEM_RUNS = [run for run in FINETUNE_RUNS if _ft_resolve_run(config, run)["e_sem"]]
FINETUNE_PLAIN_RUNS = [run for run in FINETUNE_RUNS if run not in FINETUNE_ESEM_RUNS]
NEVER = "(?!x)x"  # a wildcard pattern that matches nothing (for an empty run list)


def finetune_settings(run):
    """The run's resolved knobs as JSON: a params value, so changing a knob reruns the job."""
    return _ft_json.dumps(dict(_ft_resolve_run(config, run)), sort_keys=True, default=str)


def finetune_base_checkpoint(wildcards):
    """The base checkpoint file (an input, so a missing file is reported before the job runs)."""
    base = _ft_resolve_run(config, wildcards.run)["checkpoint"]
    return [base] if base else []


def finetune_launcher(gpus):
    """`torchrun` with one process per GPU for multi-GPU jobs; a plain process otherwise."""
    gpus = int(gpus)
    return f"torchrun --standalone --nproc_per_node={gpus} -m medpipe" if gpus > 1 else "medpipe"


def finetune_export_source(run):
    which = _ft_resolve_run(config, run)["export_checkpoint"]
    return f"{R}/finetune/{run}/{which}.pt"


def run_model_type(run):
    """Model type of a finetune run = the type of its base model (for `medpipe.sam.build_sam`)."""
    return _ft_resolve_run(config, run)["model_type"]


def run_base_label(run):
    return _ft_checkpoint_label(_ft_resolve_run(config, run)["checkpoint"])


def exported_models():
    return [f"{R}/models/{run}.pth" for run in FINETUNE_RUNS]


# ------------------------------------------------------------------------------------------------


rule finetune:
    input:
        corpus=f"{R}/splits/corpus.tsv",
        stores=stores(datasets_with_role(config, "finetune")),
        base=finetune_base_checkpoint,
    output:
        f"{R}/finetune/{{run}}/training.json",
    params:
        settings=lambda wc: finetune_settings(wc.run),
        out_dir=lambda wc: f"{R}/finetune/{wc.run}",
        launcher=lambda wc, resources: finetune_launcher(resources.gpu),
    log:
        f"{R}/logs/finetune/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{run}}.tsv"
    resources:
        gpu=gpu_count("finetune"),
        mem_mb=config["finetune"]["mem_mb"],
        runtime=config["finetune"]["runtime"],
        cpus_per_task=config["finetune"]["cpus_per_task"],
    shell:
        "{params.launcher} finetune {wildcards.run} --config {CONFIG} --corpus {input.corpus} "
        "--stores {input.stores} --out-dir {params.out_dir} > {log} 2>&1"


rule export_model_with_decoder:
    input:
        f"{R}/finetune/{{run}}/training.json",
    output:
        model=f"{R}/models/{{run}}.pth",
        decoder=f"{R}/models/{{run}}.decoder.pth",
        sha=f"{R}/models/{{run}}.sha256",
    wildcard_constraints:
        run="|".join(FINETUNE_ESEM_RUNS) or NEVER,
    params:
        source=lambda wc: finetune_export_source(wc.run),
    log:
        f"{R}/logs/export_model/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/export_model/{{run}}.tsv"
    resources:
        mem_mb=4000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "medpipe export {params.source} {output.model} > {log} 2>&1"


rule export_model:
    input:
        f"{R}/finetune/{{run}}/training.json",
    output:
        model=f"{R}/models/{{run}}.pth",
        sha=f"{R}/models/{{run}}.sha256",
    wildcard_constraints:
        run="|".join(FINETUNE_PLAIN_RUNS) or NEVER,
    params:
        source=lambda wc: finetune_export_source(wc.run),
    log:
        f"{R}/logs/export_model/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/export_model/{{run}}.tsv"
    resources:
        mem_mb=4000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "medpipe export {params.source} {output.model} > {log} 2>&1"


rule check_compat:
    input:
        f"{R}/models/{{run}}.pth",
    output:
        f"{R}/models/{{run}}.compat.json",
    wildcard_constraints:
        run="|".join(FINETUNE_RUNS) or NEVER,
    params:
        model_type=lambda wc: run_model_type(wc.run),
        base=lambda wc: run_base_label(wc.run),
    log:
        f"{R}/logs/check_compat/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/check_compat/{{run}}.tsv"
    resources:
        mem_mb=8000,
        runtime=20,
        cpus_per_task=1,
    shell:
        "medpipe check-compat {input} --model-type {params.model_type} --name {wildcards.run} "
        "--base '{params.base}' --out {output} > {log} 2>&1"


rule compat_table:
    input:
        [f"{R}/models/{run}.compat.json" for run in FINETUNE_RUNS],
    output:
        f"{R}/tables/compatibility.tsv",
    log:
        f"{R}/logs/compat_table/compatibility.log",
    benchmark:
        f"{R}/benchmarks/compat_table/compatibility.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
        cpus_per_task=1,
    shell:
        "medpipe compat-table {input} --out {output} > {log} 2>&1"


if FINETUNE_RUNS:
    TARGETS.extend(exported_models())
    TARGETS.append(f"{R}/tables/compatibility.tsv")
