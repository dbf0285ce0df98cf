# Data stage: (generated) raw files -> zarr stores -> split tables.


rule synth:
    output:
        directory(f"{SYNTH_ROOT}/{{dataset}}"),
    params:
        kind=lambda wc: config["datasets"][wc.dataset]["synth"]["kind"],
        patients=lambda wc: config["datasets"][wc.dataset]["synth"]["patients"],
        images=lambda wc: config["datasets"][wc.dataset]["synth"]["images_per_patient"],
        size=lambda wc: " ".join(map(str, config["datasets"][wc.dataset]["synth"].get("size", []))),
        seed=config["seed"],
    log:
        f"{R}/logs/synth/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/synth/{{dataset}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "medpipe synth --kind {params.kind} --out {output} --seed {params.seed} "
        "--patients {params.patients} --images-per-patient {params.images} "
        "$(test -n '{params.size}' && echo --size {params.size}) > {log} 2>&1"


rule ingest:
    input:
        ingest_inputs,
    output:
        store=directory(f"{R}/data/{{dataset}}.zarr"),
        quarantine=f"{R}/data/{{dataset}}.quarantine.tsv",
    params:
        spec=lambda wc: dataset_spec(wc.dataset),
    log:
        f"{R}/logs/ingest/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/ingest/{{dataset}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
        cpus_per_task=2,
    shell:
        "medpipe ingest --config {CONFIG} --dataset {wildcards.dataset} "
        "--out {output.store} --quarantine {output.quarantine} > {log} 2>&1"


rule split:
    input:
        store=f"{R}/data/{{dataset}}.zarr",
    output:
        f"{R}/splits/{{dataset}}.tsv",
    params:
        fractions=config["splits"]["fractions"],
        previous=lambda wc: previous_split_args(wc.dataset),
        ledger=f"{R}/splits/ledger/{{dataset}}.tsv",
    log:
        f"{R}/logs/split/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/split/{{dataset}}.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "medpipe split {input.store} --config {CONFIG} --out {output} --ledger {params.ledger} "
        "{params.previous} > {log} 2>&1"


rule split_corpus:
    input:
        stores=stores(datasets_with_role(config, "finetune")),
        dataset_splits=split_tables(datasets_with_role(config, "finetune")),
    output:
        f"{R}/splits/corpus.tsv",
    params:
        corpus=config["corpus"],
        previous=lambda wc: previous_split_args("corpus"),
        ledger=f"{R}/splits/ledger/corpus.tsv",
    log:
        f"{R}/logs/split_corpus/corpus.log",
    benchmark:
        f"{R}/benchmarks/split_corpus/corpus.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
        cpus_per_task=1,
    shell:
        "medpipe split-corpus {input.stores} --dataset-splits {input.dataset_splits} --config {CONFIG} "
        "--out {output} --ledger {params.ledger} {params.previous} > {log} 2>&1"


TARGETS += split_tables(DATASETS)
if datasets_with_role(config, "finetune"):
    TARGETS.append(f"{R}/splits/corpus.tsv")
