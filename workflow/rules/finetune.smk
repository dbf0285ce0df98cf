# Finetune stage: corpus + base model -> training folder (resumable) -> SAM-compatible export ->
# compatibility checks -> compatibility table (paper Tab. 1).
#
#   {R}/finetune/<run>/          latest.pt, best.pt, metrics.csv, tensorboard/, training.json (the rule's output)
#   {R}/models/<run>.pth         flat segment_anything state dict (+ <run>.decoder.pth when e_sem, <run>.sha256,
#                                <run>.export.json: model type, base, preset, frozen parts, iteration, hashes)
#   {R}/models/<run>.compat.json and {R}/tables/compatibility.tsv
#
# Checkpoints are not declared outputs, so Snakemake never deletes them after a failed or killed
# job: rerunning the rule resumes from latest.pt.


rule finetune:
    input:
        corpus=split_table("corpus"),
        stores=[store(name) for name in FINETUNE_DATASETS],
        base=finetune_base_checkpoint,
    output:
        f"{R}/finetune/{{run}}/training.json",
    params:
        settings=lambda wc: planning.finetune_settings_json(config, wc.run),
        seed=config["seed"],
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        launcher=finetune_launcher,
        device=device,
        config=config_snapshot,
    log:
        job_log("finetune", "{run}"),
    benchmark:
        job_benchmark("finetune", "{run}")
    resources:
        **job_resources("finetune"),
    shell:
        "{params.launcher:q} finetune {wildcards.run:q} --config {params.config:q} --corpus {input.corpus:q} "
        "--stores {input.stores:q} --out-dir {params.out_dir:q} --device {params.device:q} > {log:q} 2>&1"


rule export_model:
    # runs without the joint semantic decoder; export_model_with_decoder below for those with it
    input:
        f"{R}/finetune/{{run}}/training.json",
    output:
        model=exported_model("{run}"),
        sha=f"{R}/models/{{run}}.sha256",
        meta=f"{R}/models/{{run}}.export.json",
    wildcard_constraints:
        run=one_of(PLAIN_RUNS),
    params:
        source=finetune_export_source,
    log:
        job_log("export_model", "{run}"),
    benchmark:
        job_benchmark("export_model", "{run}")
    resources:
        **job_resources(mem_mb=4000, runtime=10),
    shell:
        "medpipe export {params.source:q} {output.model:q} > {log:q} 2>&1"


use rule export_model as export_model_with_decoder with:
    output:
        model=exported_model("{run}"),
        decoder=backbone_decoder("{run}"),
        sha=f"{R}/models/{{run}}.sha256",
        meta=f"{R}/models/{{run}}.export.json",
    wildcard_constraints:
        run=one_of(DECODER_RUNS),


rule check_compat:
    input:
        exported_model("{run}"),
    output:
        f"{R}/models/{{run}}.compat.json",
    wildcard_constraints:
        run=one_of(FINETUNE_RUNS),
    params:
        model_type=lambda wc: planning.finetune_model_type(config, wc.run),
        base=lambda wc: planning.checkpoint_label(planning.finetune_base_checkpoint(config, wc.run)),
    log:
        job_log("check_compat", "{run}"),
    benchmark:
        job_benchmark("check_compat", "{run}")
    resources:
        **job_resources(mem_mb=8000, runtime=20),
    shell:
        "medpipe check-compat {input:q} --model-type {params.model_type:q} --name {wildcards.run:q} "
        "--base {params.base:q} --out {output:q} > {log:q} 2>&1"


rule compat_table:
    input:
        [f"{R}/models/{run}.compat.json" for run in FINETUNE_RUNS],
    output:
        f"{R}/tables/compatibility.tsv",
    log:
        job_log("compat_table", "compatibility"),
    benchmark:
        job_benchmark("compat_table", "compatibility")
    resources:
        **job_resources(mem_mb=1000, runtime=5),
    shell:
        "medpipe compat-table {input:q} --out {output:q} > {log:q} 2>&1"
