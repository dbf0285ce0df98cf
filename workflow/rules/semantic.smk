# Semantic segmentation (docs/fidelity.md): every dataset with role semantic2d / semantic3d, on its split
# table, with SAM-UNETR 2D (encoder of each backbone, decoder random or e_sem-pretrained), MA-SAM 3D
# (each backbone), nnU-Net v2 and Swin UNETR; one job per method x backbone x decoder init x
# dataset x seed (backbone and decoder init are `none` for nnU-Net and Swin UNETR).
#
#   {R}/tables/semantic/runs/<method>/<dataset>/<backbone>.<init>/seed<k>.tsv   Dice per test case and class
#   {R}/semantic/<method>/<dataset>/<backbone>.<init>/seed<k>/                 predictions (NIfTI / PNG),
#                                                                            training.json; nnU-Net's folders
#   {R}/tables/semantic/{results,class_summary,seed_stats,paired_tests}.tsv and
#   {R}/figures/semantic/*.png                                              Fig. 1d/e, Fig. 8, seed statistics


rule semantic_run:
    input:
        store=store("{dataset}"),
        split=split_table("{dataset}"),
        weights=semantic_model_inputs,
    output:
        table=f"{R}/tables/semantic/runs/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}.tsv",
        record=f"{R}/semantic/{{method}}/{{dataset}}/{{backbone}}.{{init}}/seed{{seed}}/training.json",
    wildcard_constraints:
        method="sam_unetr|ma_sam|nnunet|swin_unetr",
        backbone="[A-Za-z0-9_-]+",
        init="random|pretrained|none",
        seed=r"\d+",
    params:
        model_args=semantic_model_args,
        settings=lambda wc: canonical(SEMANTIC[wc.method]),
        pred_dir=lambda wc, output: os.path.dirname(output.record),
        device=device,
        config=config_snapshot,
    log:
        job_log("semantic_run", "{method}/{dataset}/{backbone}.{init}/seed{seed}"),
    benchmark:
        job_benchmark("semantic_run", "{method}/{dataset}/{backbone}.{init}/seed{seed}")
    resources:
        **job_resources("semantic"),
    shell:
        "medpipe semantic-run --config {params.config:q} --method {wildcards.method:q} "
        "--dataset {wildcards.dataset:q} --store {input.store:q} --split {input.split:q} --seed {wildcards.seed:q} "
        "--backbone {wildcards.backbone:q} --decoder-init {wildcards.init:q} {params.model_args:q} "
        "--table {output.table:q} --pred-dir {params.pred_dir:q} --device {params.device:q} > {log:q} 2>&1"


rule semantic_aggregate:
    input:
        semantic_run_tables(),
    output:
        tables=[f"{R}/tables/semantic/{name}.tsv" for name in SEMANTIC_TABLES],
        fig1d=report(semantic_figure("fig1d"), caption="../report/semantic_fig1d.rst", category="Semantic"),
        fig1e=report(semantic_figure("fig1e"), caption="../report/semantic_fig1e.rst", category="Semantic"),
        fig8=report(semantic_figure("fig8"), caption="../report/semantic_fig8.rst", category="Semantic"),
        seeds=report(semantic_figure("seeds"), caption="../report/semantic_seeds.rst", category="Semantic"),
    params:
        settings=canonical(SEMANTIC["aggregate"]),
        datasets=canonical({"semantic2d": SEMANTIC_2D, "semantic3d": SEMANTIC_3D}),
        tables_dir=lambda wc, output: os.path.dirname(output.tables[0]),
        figures_dir=lambda wc, output: os.path.dirname(output.fig1d),
        config=config_snapshot,
    log:
        job_log("semantic_aggregate", "aggregate"),
    benchmark:
        job_benchmark("semantic_aggregate", "aggregate")
    resources:
        **job_resources(mem_mb=4000, runtime=30),
    shell:
        "medpipe semantic-aggregate {input:q} --config {params.config:q} --tables-dir {params.tables_dir:q} "
        "--figures-dir {params.figures_dir:q} > {log:q} 2>&1"
