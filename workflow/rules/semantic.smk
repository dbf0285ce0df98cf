# Semantic segmentation (SPEC 3.6): every dataset with role semantic2d / semantic3d, on its split
# table, with SAM-UNETR 2D (encoder of each backbone, decoder random or e_sem-pretrained), MA-SAM 3D
# (each backbone), nnU-Net v2 and Swin UNETR; one job per method x backbone x decoder init x
# dataset x seed (backbone and decoder init are `none` for nnU-Net and Swin UNETR).
#
#   {R}/tables/semantic/runs/<method>/<dataset>/<backbone>.<init>/seed<k>.tsv   Dice per test case and class
#   {R}/semantic/<method>/<dataset>/<backbone>.<init>/seed<k>/                 predictions (NIfTI / PNG),
#                                                                            training.json; nnU-Net's folders
#   {R}/tables/semantic/{results,class_summary,seed_stats,paired_tests}.tsv and
#   {R}/figures/semantic/*.png                                              Fig. 1d/e, Fig. 8, seed statistics

# ---- input functions of the semantic stage (the lead may move them to common.smk) -------------
from medpipe.finetune.settings import resolve_run as _sem_resolve_run

SEM = config["semantic"]
SEM_2D = datasets_with_role(config, "semantic2d")
SEM_3D = datasets_with_role(config, "semantic3d")
SEM_RUNS = config["finetune"]["runs"]
SEM_BACKBONES = SEM["backbones"] if SEM["backbones"] is not None else list(config["models"]) + list(SEM_RUNS)
for _name in SEM_BACKBONES:
    if _name not in config["models"] and _name not in SEM_RUNS:
        raise ValueError(f"semantic.backbones: {_name!r} is neither a key of `models` nor of `finetune.runs`")


def sem_backbone_type(name):
    return config["models"][name]["type"] if name in config["models"] else _sem_resolve_run(config, name)["model_type"]


def sem_backbone_weights(name):
    """The backbone's SAM state dict: a base checkpoint (or none = random init) or a finetune export."""
    if name in config["models"]:
        return config["models"][name].get("checkpoint")
    return f"{R}/models/{name}.pth"


def sem_has_decoder(name):
    return name in SEM_RUNS and _sem_resolve_run(config, name).e_sem


def sem_variants(method):
    """(backbone, decoder init) pairs a method runs with."""
    if method == "sam_unetr":
        return [(b, i) for b in SEM_BACKBONES for i in SEM["sam_unetr"]["decoder_inits"]
                if i == "random" or sem_has_decoder(b)]
    if method == "ma_sam":
        return [(b, "random") for b in SEM_BACKBONES]
    return [("none", "none")]


def sem_datasets(method):
    return {"sam_unetr": SEM_2D, "ma_sam": SEM_3D}.get(method, SEM_2D + SEM_3D)


def sem_tables():
    return [f"{R}/tables/semantic/runs/{m}/{d}/{b}.{i}/seed{s}.tsv"
            for m in SEM["methods"] for d in sem_datasets(m) for b, i in sem_variants(m) for s in SEM["seeds"]]


def sem_model_inputs(wildcards):
    """Weights the job reads (inputs, so a missing export is built or reported before the job runs)."""
    if wildcards.backbone == "none":
        return []
    files = [sem_backbone_weights(wildcards.backbone)] if sem_backbone_weights(wildcards.backbone) else []
    if wildcards.init == "pretrained":
        files.append(f"{R}/models/{wildcards.backbone}.decoder.pth")
    return files


def sem_model_args(wildcards):
    if wildcards.backbone == "none":
        return ""
    args = f"--model-type {sem_backbone_type(wildcards.backbone)}"
    weights = sem_backbone_weights(wildcards.backbone)
    if weights:
        args += f" --checkpoint {weights}"
    if wildcards.init == "pretrained":
        args += f" --decoder-file {R}/models/{wildcards.backbone}.decoder.pth"
    return args


def sem_figures():
    return [f"{R}/figures/semantic/{name}.png" for name in
            ("fig1d_semantic2d", "fig1e_semantic3d", "fig8_semantic", "fig6_semantic_seeds")]


# ------------------------------------------------------------------------------------------------


rule semantic_run:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
        split=f"{R}/splits/{{dataset}}.tsv",
        weights=sem_model_inputs,
    output:
        table=f"{R}/tables/semantic/runs/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}.tsv",
        record=f"{R}/semantic/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}/training.json",
    wildcard_constraints:
        method="sam_unetr|ma_sam|nnunet|swin_unetr",
        backbone="[A-Za-z0-9_-]+",
        init="random|pretrained|none",
        seed=r"\d+",
    params:
        model_args=sem_model_args,
        settings=lambda wc: json.dumps(SEM[wc.method], sort_keys=True),
        pred_dir=lambda wc, output: os.path.dirname(output.record),
        device=lambda wc, resources: "cuda" if int(resources.gpu) > 0 else "cpu",
    log:
        f"{R}/logs/semantic_run/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/semantic_run/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}.tsv"
    resources:
        gpu=gpu_count("semantic"),
        mem_mb=SEM["mem_mb"],
        runtime=SEM["runtime"],
        cpus_per_task=SEM["cpus_per_task"],
    shell:
        "medpipe semantic-run --config {CONFIG} --method {wildcards.method} --dataset {wildcards.dataset} "
        "--store {input.store} --split {input.split} --seed {wildcards.seed} --backbone {wildcards.backbone} "
        "--decoder-init {wildcards.init} {params.model_args} --table {output.table} --pred-dir {params.pred_dir} "
        "--device {params.device} > {log} 2>&1"


rule semantic_aggregate:
    input:
        sem_tables(),
    output:
        tables=[f"{R}/tables/semantic/{name}.tsv" for name in ("results", "class_summary", "seed_stats", "paired_tests")],
        fig1d=report(f"{R}/figures/semantic/fig1d_semantic2d.png", caption="../report/semantic_fig1d.rst",
                     category="Semantic"),
        fig1e=report(f"{R}/figures/semantic/fig1e_semantic3d.png", caption="../report/semantic_fig1e.rst",
                     category="Semantic"),
        fig8=report(f"{R}/figures/semantic/fig8_semantic.png", caption="../report/semantic_fig8.rst",
                    category="Semantic"),
        seeds=report(f"{R}/figures/semantic/fig6_semantic_seeds.png", caption="../report/semantic_seeds.rst",
                     category="Semantic"),
    log:
        f"{R}/logs/semantic_aggregate/aggregate.log",
    benchmark:
        f"{R}/benchmarks/semantic_aggregate/aggregate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
        cpus_per_task=1,
    shell:
        "medpipe semantic-aggregate {input} --config {CONFIG} --tables-dir {R}/tables/semantic "
        "--figures-dir {R}/figures/semantic > {log} 2>&1"


if sem_tables():
    TARGETS.extend(rules.semantic_aggregate.output)
