# Data stage: (generated) raw files -> zarr stores -> split tables.


scattergather:
    ingest_part=config["ingest"]["parts"],


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
    wildcard_constraints:
        dataset=one_of(FILE_DATASETS),
    input:
        ingest_inputs,
    output:
        store=directory(store("{dataset}")),
        quarantine=f"{R}/data/{{dataset}}.quarantine.tsv",
    params:
        spec=lambda wc: canonical(config["datasets"][wc.dataset]),
        ingest=canonical(without_guards(config["ingest"], "allow_empty", "parts", "max_image_bytes")),  # parts: the corpus only
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


# The SA-Med2D corpus: one planning job streams the index once, one job per part writes its own sharded
# arrays (a killed part reruns alone), the gather job links them into one packed store.
rule ingest_plan:
    wildcard_constraints:
        dataset=one_of(CORPUS_DATASETS),
    input:
        ingest_inputs,
    output:
        directory(f"{R}/data/{{dataset}}.plan"),
    params:
        spec=lambda wc: canonical(config["datasets"][wc.dataset]),
        parts=ingest_part_count(),
        raw=raw_digest,
        config=config_snapshot,
    log:
        job_log("ingest_plan", "{dataset}"),
    benchmark:
        job_benchmark("ingest_plan", "{dataset}")
    resources:
        **job_resources(mem_mb=4000, runtime=240),
    shell:
        "medpipe ingest-plan --config {params.config:q} --dataset {wildcards.dataset:q} --parts {params.parts:q} "
        "--out {output:q} > {log:q} 2>&1"


rule ingest_part:
    wildcard_constraints:
        dataset=one_of(CORPUS_DATASETS),
    input:
        plan=f"{R}/data/{{dataset}}.plan",
    output:
        directory(f"{R}/data/{{dataset}}.parts/{{scatteritem}}.zarr"),
    params:
        spec=lambda wc: canonical(config["datasets"][wc.dataset]),
        config=config_snapshot,
    log:
        job_log("ingest_part", "{dataset}.{scatteritem}"),
    benchmark:
        job_benchmark("ingest_part", "{dataset}.{scatteritem}")
    resources:
        **job_resources(mem_mb=2000, runtime=240),
    shell:
        "medpipe ingest-part --config {params.config:q} --dataset {wildcards.dataset:q} --plan {input.plan:q} "
        "--part {wildcards.scatteritem:q} --out {output:q} > {log:q} 2>&1"


rule ingest_gather:
    wildcard_constraints:
        dataset=one_of(CORPUS_DATASETS),
    input:
        gather.ingest_part(f"{R}/data/{{{{dataset}}}}.parts/{{scatteritem}}.zarr"),
    output:
        store=directory(store("{dataset}")),
        quarantine=f"{R}/data/{{dataset}}.quarantine.tsv",
    params:
        config=config_snapshot,
    log:
        job_log("ingest_gather", "{dataset}"),
    benchmark:
        job_benchmark("ingest_gather", "{dataset}")
    resources:
        **job_resources(mem_mb=8000, runtime=60),
    shell:
        "medpipe ingest-gather {input:q} --config {params.config:q} --dataset {wildcards.dataset:q} "
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
