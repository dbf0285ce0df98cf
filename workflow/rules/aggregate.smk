# Aggregation of the interactive results: tables under {R}/tables/, PNG + SVG figures under
# {R}/figures/ (SVG copies carry the report captions in workflow/report/). Figures are drawn only
# from the summary tables written by the same job, so every plotted number has its table row.

IA_FIGURES = ["fig3a_dice_per_iteration", "fig3b_difference", "fig1b_interactive2d", "fig1c_interactive3d",
              "fig7b_mask_prompts"]
IA_TABLES = ["interactive2d", "interactive2d_summary", "interactive2d_noc", "interactive2d_difference",
             "interactive3d", "interactive3d_summary"]


rule aggregate_interactive:
    input:
        tables2d=ia_tables_2d(),
        tables3d=ia_tables_3d(),
    output:
        tables=[f"{R}/tables/{name}.tsv" for name in IA_TABLES],
        png=[
            report(f"{R}/figures/{name}.png", caption=f"../report/{name}.rst", category="Interactive")
            for name in IA_FIGURES
        ],
        svg=[f"{R}/figures/{name}.svg" for name in IA_FIGURES],
    log:
        f"{R}/logs/aggregate_interactive/aggregate.log",
    benchmark:
        f"{R}/benchmarks/aggregate_interactive/aggregate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
        cpus_per_task=1,
    shell:
        "medpipe aggregate-interactive --config {CONFIG} --tables2d {input.tables2d} --tables3d {input.tables3d} "
        f"--tables {R}/tables --figures {R}/figures > {{log}} 2>&1"


if ia_tables_2d():
    TARGETS.extend(rules.aggregate_interactive.output)
