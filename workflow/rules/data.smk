# Data stage: (generated) raw files -> zarr stores -> split tables.


rule synth:
    output:
        directory(f"{SYNTH_ROOT}/{{dataset}}"),
    params:
        kind=lambda wc: config["datasets"][wc.dataset]["synth"]["kind"],
        patients=lambda wc: config["datasets"][wc.dataset]["synth"]["patients"],
        images=lambda wc: config["datasets"][wc.dataset]["synth"]["images_per_patient"],
        size=synth_size_args,
        seed=config["seed"],
    log:
        job_log("synth", "{dataset}"),
    benchmark:
        job_benchmark("synth", "{dataset}")
    resources:
        **job_resources(mem_mb=2000, runtime=10),
    shell:
        "medpipe synth --kind {params.kind:q} --out {output:q} --seed {params.seed:q} "
        "--patients {params.patients:q} --images-per-patient {params.images:q} {params.size:q} > {log:q} 2>&1"


rule ingest:
    input:
        ingest_inputs,
    output:
        store=directory(store("{dataset}")),
        quarantine=f"{R}/data/{{dataset}}.quarantine.tsv",
    params:
        spec=lambda wc: canonical(config["datasets"][wc.dataset]),
        ingest=canonical(without_guards(config["ingest"], "allow_empty", "max_image_bytes")),
        raw=raw_digest,
        config=config_snapshot,
    log:
        job_log("ingest", "{dataset}"),
    benchmark:
        job_benchmark("ingest", "{dataset}")
    resources:
        **job_resources(mem_mb=4000, runtime=120, cpus_per_task=2),
    shell:
        "medpipe ingest --config {params.config:q} --dataset {wildcards.dataset:q} "
        "--out {output.store:q} --quarantine {output.quarantine:q} > {log:q} 2>&1"


rule split:
    input:
        store=store("{dataset}"),
    output:
        split_table("{dataset}"),
    params:
        fractions=canonical(config["splits"]["fractions"]),
        seed=config["seed"],
        previous=lambda wc: previous_split_args(wc.dataset),
        ledger=f"{R}/splits/ledger/{{dataset}}.tsv",
        config=config_snapshot,
    log:
        job_log("split", "{dataset}"),
    benchmark:
        job_benchmark("split", "{dataset}")
    resources:
        **job_resources(mem_mb=1000, runtime=10),
    shell:
        "medpipe split {input.store:q} --config {params.config:q} --out {output:q} --ledger {params.ledger:q} "
        "{params.previous:q} > {log:q} 2>&1"


rule split_corpus:
    input:
        stores=[store(name) for name in FINETUNE_DATASETS],
        dataset_splits=[split_table(name) for name in FINETUNE_DATASETS],
    output:
        split_table("corpus"),
    params:
        corpus=canonical(config["corpus"]),
        seed=config["seed"],
        previous=lambda wc: previous_split_args("corpus"),
        ledger=f"{R}/splits/ledger/corpus.tsv",
        config=config_snapshot,
    log:
        job_log("split_corpus", "corpus"),
    benchmark:
        job_benchmark("split_corpus", "corpus")
    resources:
        **job_resources(mem_mb=1000, runtime=10),
    shell:
        "medpipe split-corpus {input.stores:q} --dataset-splits {input.dataset_splits:q} --config {params.config:q} "
        "--out {output:q} --ledger {params.ledger:q} {params.previous:q} > {log:q} 2>&1"
