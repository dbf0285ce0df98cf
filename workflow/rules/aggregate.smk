# Aggregation of the interactive results: tables under {R}/tables/, PNG + SVG figures under
# {R}/figures/ (SVG copies carry the report captions in workflow/report/). Figures are drawn only
# from the summary tables written by the same job, so every plotted number has its table row.


rule aggregate_interactive:
    input:
        tables2d=interactive_tables_2d(),
        objects2d=interactive_tables_2d(".objects.tsv"),
        tables3d=interactive_tables_3d(),
    output:
        tables=[f"{R}/tables/{name}.tsv" for name in INTERACTIVE_TABLES],
        png=[
            report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Interactive")
            for name in INTERACTIVE_FIGURES
        ],
        svg=[f"{R}/figures/{name}.svg" for name in INTERACTIVE_FIGURES],
    params:
        settings=canonical(config["aggregate"]),
        seed=config["seed"],
        models=list(EVAL_MODELS),  # in order: the first base model is the default reference (Fig. 3b)
        tables_dir=lambda wc, output: os.path.dirname(output.tables[0]),
        figures_dir=lambda wc, output: os.path.dirname(output.png[0]),
        config=config_snapshot,
    log:
        job_log("aggregate_interactive", "aggregate"),
    benchmark:
        job_benchmark("aggregate_interactive", "aggregate")
    resources:
        **job_resources(mem_mb=4000, runtime=30),
    shell:
        "medpipe aggregate-interactive --config {params.config:q} --tables2d {input.tables2d:q} "
        "--objects2d {input.objects2d:q} --tables3d {input.tables3d:q} --tables {params.tables_dir:q} "
        "--figures {params.figures_dir:q} > {log:q} 2>&1"
