# Interactive evaluation (docs/fidelity.md): every model (base models + finetune runs) on every dataset
# with role interactive2d / interactive3d. One job per model x dataset x setting:
#
#   {R}/embeddings/<model>/<dataset>.zarr                    image-embedding cache: every image / slice the
#                                                            evaluation of the dataset uses, encoded once
#   {R}/interactive2d/<model>/<dataset>/start~S/masks~M.tsv  union Dice per image, class and prediction of one
#                                                            setting (start point|box x mask prompts off|on,
#                                                            all seeds): the paper's number
#   {R}/interactive2d/<model>/<dataset>/start~S/masks~M.objects.tsv
#                                                            per-object Dice of the same predictions (for NoC)
#   {R}/interactive3d/<model>/<dataset>/start~S/{grid,selected,test,oracle}.tsv
#                                                            one first-slice prompt: the grid on val, the chosen
#                                                            setting on test, the oracle
#   {R}/interactive3d/<model>/<dataset>/start~S/points/iou_threshold~T/projection~P/box_extension~E.tsv
#                                                            one grid point on the validation volumes, alone
#                                                            (not part of `all`; ask for the file to run it)
#
# Only the embed job runs the image encoder; the evaluation jobs read its cache. A finetune run with a
# frozen image encoder has its base model's encoder, so it reads the base model's cache (no embed job
# of its own); every job checks that the cache was made by an encoder with its model's weights.


rule interactive_embed:
    input:
        store=store("{dataset}"),
        splits=split_table("{dataset}"),
        model=eval_model_checkpoint,
    output:
        directory(f"{R}/embeddings/{{model}}/{{dataset}}.zarr"),
    wildcard_constraints:
        dataset=one_of(INTERACTIVE_2D + INTERACTIVE_3D),
    params:
        model=eval_model,
        seed=config["seed"],
        roles=dataset_roles,
        settings=interactive_settings("split2d", "min_object_px", "preprocess"),
        device=device,
        config=config_snapshot,
    log:
        job_log("interactive_embed", "{model}/{dataset}"),
    benchmark:
        job_benchmark("interactive_embed", "{model}/{dataset}")
    resources:
        **job_resources("interactive"),
    shell:
        "medpipe embed --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q} "
        "--store {input.store:q} --splits {input.splits:q} --cache {output:q} --device {params.device:q} "
        "--threads {resources.torch_threads:q} > {log:q} 2>&1"


rule interactive2d:
    input:
        store=store("{dataset}"),
        splits=split_table("{dataset}"),
        cache=embedding_cache,
        model=eval_model_checkpoint,
    output:
        union=f"{R}/interactive2d/{{model}}/{{dataset}}/start~{{start}}/masks~{{masks}}.tsv",
        objects=f"{R}/interactive2d/{{model}}/{{dataset}}/start~{{start}}/masks~{{masks}}.objects.tsv",
    wildcard_constraints:
        dataset=one_of(INTERACTIVE_2D),
        start=one_of(INTERACTIVE["starts"]),
        masks=one_of(INTERACTIVE["masks"]),
    params:
        model=eval_model,
        seed=config["seed"],
        settings=interactive_settings("split2d", "seeds", "n_iterations", "min_object_px", "preprocess"),
        device=device,
        config=config_snapshot,
    log:
        job_log("interactive2d", "{model}/{dataset}/start~{start}/masks~{masks}"),
    benchmark:
        job_benchmark("interactive2d", "{model}/{dataset}/start~{start}/masks~{masks}")
    resources:
        **job_resources("interactive"),
    shell:
        "medpipe eval2d --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q} "
        "--store {input.store:q} --splits {input.splits:q} --cache {input.cache:q} --device {params.device:q} "
        "--start {wildcards.start:q} --masks {wildcards.masks:q} "
        "--threads {resources.torch_threads:q} --out {output.union:q} --out-objects {output.objects:q} > {log:q} 2>&1"


rule interactive3d:
    input:
        store=store("{dataset}"),
        splits=split_table("{dataset}"),
        cache=embedding_cache,
        model=eval_model_checkpoint,
    output:
        grid=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/grid.tsv",
        selected=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/selected.tsv",
        test=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/test.tsv",
        oracle=f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/oracle.tsv",
    wildcard_constraints:
        dataset=one_of(INTERACTIVE_3D),
        start=one_of(INTERACTIVE["starts3d"]),
    params:
        model=eval_model,
        seed=config["seed"],
        settings=interactive_settings("seeds", "grid3d", "preprocess", "micro_sam_rules"),
        objects=dataset_objects3d,
        out_dir=lambda wc, output: os.path.dirname(output.grid),
        device=device,
        config=config_snapshot,
    log:
        job_log("interactive3d", "{model}/{dataset}/start~{start}"),
    benchmark:
        job_benchmark("interactive3d", "{model}/{dataset}/start~{start}")
    resources:
        **job_resources("interactive"),
    shell:
        "medpipe eval3d --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q} "
        "--store {input.store:q} --splits {input.splits:q} --cache {input.cache:q} --device {params.device:q} "
        "--starts {wildcards.start:q} "
        "--threads {resources.torch_threads:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule interactive3d_grid_point:
    # One grid point on the validation volumes, e.g.
    #   snakemake results/interactive3d/sam_tiny/demo_ct/start~box/points/iou_threshold~0.8/projection~mask/box_extension~0.0.tsv
    input:
        store=store("{dataset}"),
        splits=split_table("{dataset}"),
        cache=embedding_cache,
        model=eval_model_checkpoint,
    output:
        f"{R}/interactive3d/{{model}}/{{dataset}}/start~{{start}}/points/{GRID_POINT}.tsv",
    wildcard_constraints:
        dataset=one_of(INTERACTIVE_3D),
        start=one_of(INTERACTIVE["starts3d"]),
        iou_threshold=r"[0-9.]+",
        projection="[a-z_]+",
        box_extension=r"[0-9.]+",
    params:
        model=eval_model,
        seed=config["seed"],
        settings=interactive_settings("seeds", "preprocess", "micro_sam_rules"),
        redraw=INTERACTIVE["grid3d"]["redraw_first_prompt"],
        objects=dataset_objects3d,
        out_dir=lambda wc, output: os.path.splitext(output[0])[0],
        device=device,
        config=config_snapshot,
    log:
        job_log("interactive3d_grid_point", f"{{model}}/{{dataset}}/start~{{start}}/{GRID_POINT}"),
    benchmark:
        job_benchmark("interactive3d_grid_point", f"{{model}}/{{dataset}}/start~{{start}}/{GRID_POINT}")
    resources:
        **job_resources("interactive"),
    shell:
        "medpipe eval3d --config {params.config:q} --model {wildcards.model:q} --dataset {wildcards.dataset:q} "
        "--store {input.store:q} --splits {input.splits:q} --cache {input.cache:q} --device {params.device:q} "
        "--starts {wildcards.start:q} --iou-thresholds {wildcards.iou_threshold:q} "
        "--projections {wildcards.projection:q} --box-extensions {wildcards.box_extension:q} --grid-only "
        "--out-dir {params.out_dir:q} --threads {resources.torch_threads:q} > {log:q} 2>&1 "
        "&& mv {params.out_dir:q}/grid.tsv {output:q} && rmdir {params.out_dir:q}"


rule interactive3d_sam2:
    # SAM2-family baseline (interactive.sam2): video propagation on the test volumes, same objects,
    # start slices and first prompts as the SAM propagation above.
    input:
        store=store("{dataset}"),
        splits=split_table("{dataset}"),
        checkpoint=sam2_checkpoint,
    output:
        f"{R}/interactive3d_sam2/{{sam2}}/{{dataset}}.tsv",
    wildcard_constraints:
        dataset=one_of(INTERACTIVE_3D),
        sam2=one_of(SAM2_MODELS),
    params:
        model=lambda wc: canonical(SAM2_MODELS[wc.sam2]),
        seed=config["seed"],
        settings=interactive_settings("starts3d", "seeds", "preprocess"),
        objects=dataset_objects3d,
        device=device,
        config=config_snapshot,
    log:
        job_log("interactive3d_sam2", "{sam2}/{dataset}"),
    benchmark:
        job_benchmark("interactive3d_sam2", "{sam2}/{dataset}")
    resources:
        **job_resources("interactive"),
    shell:
        "medpipe eval3d-sam2 --config {params.config:q} --model {wildcards.sam2:q} --dataset {wildcards.dataset:q} "
        "--store {input.store:q} --splits {input.splits:q} --device {params.device:q} --out {output:q} > {log:q} 2>&1"
