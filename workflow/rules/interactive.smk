# Interactive evaluation (SPEC 3.4, 3.5): every model (base models + finetune runs) on every dataset
# with role interactive2d / interactive3d. One job per model x dataset x setting:
#
#   {R}/embeddings/<model>/<dataset>.zarr                    image-embedding cache: every image / slice the
#                                                            evaluation of the dataset uses, encoded once
#   {R}/interactive2d/<model>/<dataset>/start~S/masks~M.tsv  per-object, per-iteration Dice of one setting
#                                                            (start point|box x mask prompts off|on, all seeds)
#   {R}/interactive3d/<model>/<dataset>/start~S/{grid,selected,test,oracle}.tsv
#                                                            one first-slice prompt: the grid on val, the chosen
#                                                            setting on test, the oracle
#   {R}/interactive3d/<model>/<dataset>/start~S/points/iou_threshold~T/projection~P/box_extension~E.tsv
#                                                            one grid point on the validation volumes, alone
#                                                            (not part of `all`; ask for the file to run it)
#
# Only the embed job runs the image encoder; the evaluation jobs read its cache.

# ---- input functions of the interactive stage (the lead may move them to common.smk) ----------
import pandas as _ia_pd
from snakemake.utils import Paramspace as _IaParamspace

from medpipe.models.specs import model_specs as _ia_model_specs

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


def ia_cache(wildcards):
    return f"{R}/embeddings/{wildcards.model}/{wildcards.dataset}.zarr"


def ia_tables_2d():
    return [
        f"{R}/interactive2d/{m}/{d}/start~{s}/masks~{k}.tsv"
        for m in IA_MODELS
        for d in IA_DATASETS_2D
        for s in IA_SECTION["starts"]
        for k in IA_SECTION["masks"]
    ]


def ia_tables_3d():
    return [
        f"{R}/interactive3d/{m}/{d}/start~{s}/{t}.tsv"
        for m in IA_MODELS
        for d in IA_DATASETS_3D
        for s in IA_SECTION["starts3d"]
        for t in ("test", "oracle")
    ]


# ------------------------------------------------------------------------------------------------


wildcard_constraints:
    model="|".join(IA_MODELS),


rule interactive_embed:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        model=ia_model_checkpoint,
    output:
        directory(f"{R}/embeddings/{{model}}/{{dataset}}.zarr"),
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_2D + IA_DATASETS_3D) or "(?!x)x",
    params:
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive_embed/{{model}}/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/interactive_embed/{{model}}/{{dataset}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe embed --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {output} --device {params.device} "
        f"--threads {IA_SECTION['threads']} > {{log}} 2>&1"


rule interactive2d:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        cache=ia_cache,
        model=ia_model_checkpoint,
    output:
        f"{R}/interactive2d/{{model}}/{{dataset}}/start~{{start}}/masks~{{masks}}.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_2D) or "(?!x)x",
        start="|".join(IA_SECTION["starts"]),
        masks="|".join(IA_SECTION["masks"]),
    params:
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive2d/{{model}}/{{dataset}}/start~{{start}}/masks~{{masks}}.log",
    benchmark:
        f"{R}/benchmarks/interactive2d/{{model}}/{{dataset}}/start~{{start}}/masks~{{masks}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval2d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {input.cache} --device {params.device} "
        "--start {wildcards.start} --masks {wildcards.masks} "
        f"--threads {IA_SECTION['threads']} --out {{output}} > {{log}} 2>&1"


rule interactive3d:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        cache=ia_cache,
        model=ia_model_checkpoint,
    output:
        grid=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/grid.tsv",
        selected=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/selected.tsv",
        test=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/test.tsv",
        oracle=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/oracle.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_3D) or "(?!x)x",
        start="|".join(IA_SECTION["starts3d"]),
    params:
        out_dir=lambda wc: f"{R}/interactive3d/{wc.model}/{wc.dataset}/start~{wc.start}",
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive3d/{{model}}/{{dataset}}/start~{{start}}.log",
    benchmark:
        f"{R}/benchmarks/interactive3d/{{model}}/{{dataset}}/start~{{start}}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval3d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {input.cache} --device {params.device} "
        "--starts {wildcards.start} "
        f"--threads {IA_SECTION['threads']} --out-dir {{params.out_dir}} > {{log}} 2>&1"


rule interactive3d_grid_point:
    # One grid point on the validation volumes, e.g.
    #   snakemake results/interactive3d/sam_tiny/demo_ct/start~box/points/iou_threshold~0.8/projection~mask/box_extension~0.0.tsv
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        splits=f"{R}/splits/{{dataset}}.tsv",
        cache=ia_cache,
        model=ia_model_checkpoint,
    output:
        f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/points/{IA_GRID.wildcard_pattern}.tsv",
    wildcard_constraints:
        dataset="|".join(IA_DATASETS_3D) or "(?!x)x",
        start="|".join(IA_SECTION["starts3d"]),
    params:
        point=IA_GRID.instance,
        out_dir=lambda wc, output: os.path.splitext(output[0])[0],
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/interactive3d_grid_point/{{model}}/{{dataset}}/start~{{start}}/{IA_GRID.wildcard_pattern}.log",
    benchmark:
        f"{R}/benchmarks/interactive3d_grid_point/{{model}}/{{dataset}}/start~{{start}}/{IA_GRID.wildcard_pattern}.tsv"
    resources:
        gpu=gpu_count("interactive"),
        mem_mb=IA_SECTION["mem_mb"],
        runtime=IA_SECTION["runtime"],
        cpus_per_task=IA_SECTION["cpus_per_task"],
    shell:
        "medpipe eval3d --config {CONFIG} --model {wildcards.model} --dataset {wildcards.dataset} "
        "--store {input.store} --splits {input.splits} --cache {input.cache} --device {params.device} "
        "--starts {wildcards.start} --iou-thresholds {params.point[iou_threshold]} "
        "--projections {params.point[projection]} --box-extensions {params.point[box_extension]} --grid-only "
        f"--out-dir {{params.out_dir}} --threads {IA_SECTION['threads']} > {{log}} 2>&1 "
        "&& mv {params.out_dir}/grid.tsv {output} && rmdir {params.out_dir}"


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
