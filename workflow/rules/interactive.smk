# Interactive evaluation (SPEC 3.4, 3.5): every model (base models + finetune runs) on every dataset
# with role interactive2d / interactive3d.
#
#   {R}/interactive2d/<model>/<dataset>.tsv                  per-object, per-iteration Dice (all starts x masks x seeds)
#   {R}/interactive3d/<model>/<dataset>/{grid,selected,test,oracle}.tsv
#   {R}/interactive3d/<model>/<dataset>/points/iou_threshold~T/projection~P/box_extension~E.tsv
#                                                            one grid point on the validation volumes, alone
#                                                            (not part of `all`; ask for the file to run it)
#   {R}/embeddings/<model>/<dataset>.zarr                    image-embedding cache (not a declared output:
#                                                            it survives reruns and is reused by every job)
#
# The jobs of one model and dataset share the embedding cache; only one of them writes it at a time
# (a 2D dataset has one job per model; a 3D grid-point job waits for the full grid job).

# ---- input functions of the interactive stage (the lead may move them to common.smk) ----------
import pandas as _ia_pd
from snakemake.utils import Paramspace as _IaParamspace

from medpipe.interactive.models import model_specs as _ia_model_specs

IA_MODELS = _ia_model_specs(config)
IA_DATASETS_2D = datasets_with_role(config, "interactive2d")
IA_DATASETS_3D = datasets_with_role(config, "interactive3d")
IA_SECTION = config["interactive"]
IA_GRID = _IaParamspace(
    _ia_pd.DataFrame(
        [
            {"iou_threshold": t, "projection": p, "box_extension": e}
            for t in IA_SECTION["grid3d"]["iou_thresholds"]
            for p in IA_SECTION["grid3d"]["projections"]
            for e in IA_SECTION["grid3d"]["box_extensions"]
        ]
    )
)


def ia_model_checkpoint(wildcards):
    """The model's weights file (a finetune export is built by the finetune stage), or none for random init."""
    weights = IA_MODELS[wildcards.model].checkpoint
    return [weights] if weights else []


def ia_tables_2d():
    return [f"{R}/interactive2d/{m}/{d}.tsv" for m in IA_MODELS for d in IA_DATASETS_2D]


def ia_tables_3d():
    return [f"{R}/interactive3d/{m}/{d}/{t}.tsv" for m in IA_MODELS for d in IA_DATASETS_3D for t in ("test", "oracle")]


# ------------------------------------------------------------------------------------------------


wildcard_constraints:
    model="|".join(IA_MODELS),


rule interactive2d:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        model=ia_model_checkpoint,
    output:
        f"{R}/interactive2d/{{model}}/{{dataset}}.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_2D) or "(?!x)x",
    params:
        cache=lambda wc: f"{R}/embeddings/{wc.model}/{wc.dataset}.zarr",
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive2d/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/interactive2d/{{model}}/{{dataset}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval2d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {params.cache} --device {params.device} "
        f"--threads {IA_SECTION['threads']} --out {{output}} > {{log}} 2>&1"


rule interactive3d:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        model=ia_model_checkpoint,
    output:
        grid=f"{R}/interactive3d/{{model}}/{{dataset}}/grid.tsv",
        selected=f"{R}/interactive3d/{{model}}/{{dataset}}/selected.tsv",
        test=f"{R}/interactive3d/{{model}}/{{dataset}}/test.tsv",
        oracle=f"{R}/interactive3d/{{model}}/{{dataset}}/oracle.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_3D) or "(?!x)x",
    params:
        cache=lambda wc: f"{R}/embeddings/{wc.model}/{wc.dataset}.zarr",
        out_dir=lambda wc: f"{R}/interactive3d/{wc.model}/{wc.dataset}",
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive3d/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/interactive3d/{{model}}/{{dataset}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval3d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {params.cache} --device {params.device} "
        f"--threads {IA_SECTION['threads']} --out-dir {{params.out_dir}} > {{log}} 2>&1"


rule interactive3d_grid_point:
    # One grid point on the validation volumes, e.g.
    #   snakemake results/interactive3d/sam_tiny/demo_ct/points/iou_threshold~0.8/projection~mask/box_extension~0.0.tsv
    # It runs after the full grid job of its model and dataset, whose embedding cache it reuses.
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        model=ia_model_checkpoint,
        after=f"{R}/interactive3d/{{model}}/{{dataset}}/grid.tsv",
    output:
        f"{R}/interactive3d/{{model}}/{{dataset}}/points/{IA_GRID.wildcard_pattern}.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_3D) or "(?!x)x",
    params:
        point=IA_GRID.instance,
        cache=lambda wc: f"{R}/embeddings/{wc.model}/{wc.dataset}.zarr",
        out_dir=lambda wc, output: os.path.splitext(output[0])[0],
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive3d_grid_point/{{model}}/{{dataset}}/{IA_GRID.wildcard_pattern}.log",
    benchmark:
        f"{R}/benchmarks/interactive3d_grid_point/{{model}}/{{dataset}}/{IA_GRID.wildcard_pattern}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval3d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {params.cache} --device {params.device} "
        "--iou-thresholds {params.point[iou_threshold]} --projections {params.point[projection]} "
        "--box-extensions {params.point[box_extension]} --grid-only --out-dir {params.out_dir} "
        f"--threads {IA_SECTION['threads']} > {{log}} 2>&1 && mv {{params.out_dir}}/grid.tsv {{output}} "
        "&& rmdir {params.out_dir}"


rule interactive3d_sam2:
    # SAM2-family baseline (interactive.sam2): video propagation on the test volumes, same objects,
    # start slices and first prompts as the SAM propagation above.
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        checkpoint=lambda wc: [c] if (c := IA_SECTION["sam2"][wc.sam2].get("checkpoint")) else [],
    output:
        f"{R}/interactive3d_sam2/{{sam2}}/{{dataset}}.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_3D) or "(?!x)x",
        sam2="|".join(IA_SECTION["sam2"]) or "(?!x)x",
    params:
        spec=lambda wc: IA_SECTION["sam2"][wc.sam2],
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive3d_sam2/{{sam2}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/interactive3d_sam2/{{sam2}}/{{dataset}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval3d-sam2 --config {CONFIG} --model {wildcards.sam2} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --device {params.device} --out {output} > {log} 2>&1"


TARGETS.extend(ia_tables_2d())
TARGETS.extend(ia_tables_3d())
TARGETS.extend(f"{R}/interactive3d_sam2/{m}/{d}.tsv" for m in IA_SECTION["sam2"] for d in IA_DATASETS_3D)
