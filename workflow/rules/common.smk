# Parse-time state of the workflow and every helper its rules use; the rule files hold rules only.
#
# The library is imported only through `medpipe.planning`, which never imports torch: every dry run
# and every cluster job parses this file (tests/test_workflow_parse.py holds that line).
#
# Conventions of the rules:
#   * params: every config value that decides what a job writes, as canonical JSON (`canonical`),
#     so editing a config value reruns exactly the jobs that use it and reordering keys reruns
#     nothing. Values that only decide how fast a job runs (gpus, mem_mb, runtime, cpus_per_task,
#     interactive.threads, interactive.max_objects_per_call) are resources or not tracked, and so are
#     the guards that only decide whether a job may run (ingest.allow_empty, splits.max_missing).
#   * shell: every path and config-derived value is shell-quoted (`{input:q}`, `{params.x:q}`; list
#     values are quoted item by item), so any results_dir or checkpoint path works.
#   * the jobs read the validated config from a snapshot (`config_snapshot`), a derived params value
#     that Snakemake does not track (its name changes with every config edit).
import glob
import itertools
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import PurePosixPath

from medpipe import planning

# -- the config --------------------------------------------------------------------------------
# Checked before the rules are defined, in this order; a key given twice in a config file (Snakemake's
# reader keeps the last), the config against the schema and itself, the checkpoint files it names.
# A problem ends the run with one line per problem, naming the file and the key; no traceback, no job.
_source = ", ".join(map(str, workflow.configfiles)) or "snakemake config"
try:
    for _path in workflow.configfiles:
        planning.read_config_file(_path)
    planning.validate_config(config, source=_source)
    planning.check_files(config, source=_source)
except planning.ConfigError as _error:
    sys.exit(str(_error))

R = str(PurePosixPath(config["results_dir"]))  # as medpipe spells paths under it (`results/`, `./results` -> `results`)
# Jobs read this snapshot of the validated config, so command-line overrides reach them. It is
# written by `onstart` (only when jobs run: a dry run writes nothing), named by its content.
CONFIG_SNAPSHOT = planning.config_snapshot_path(config)
SYNTH_ROOT = "raw/demo"
NEVER = "(?!x)x"  # a wildcard constraint that matches nothing (for an empty list of names)

DATASETS = list(config["datasets"])
# `layout: sa_med2d` corpora are ingested in parts (plan -> parts -> gather) into a packed store
CORPUS_DATASETS = [name for name, spec in config["datasets"].items() if spec.get("layout") == "sa_med2d"]
FILE_DATASETS = [name for name in DATASETS if name not in CORPUS_DATASETS]
FINETUNE_DATASETS = planning.datasets_with_role(config, "finetune")
INTERACTIVE_2D = planning.datasets_with_role(config, "interactive2d")
INTERACTIVE_3D = planning.datasets_with_role(config, "interactive3d")
SEMANTIC_2D = planning.datasets_with_role(config, "semantic2d")
SEMANTIC_3D = planning.datasets_with_role(config, "semantic3d")

FINETUNE_RUNS = list(config["finetune"]["runs"])
DECODER_RUNS = [run for run in FINETUNE_RUNS if planning.finetune_has_decoder(config, run)]  # e_sem: + decoder file
PLAIN_RUNS = [run for run in FINETUNE_RUNS if run not in DECODER_RUNS]

INTERACTIVE = config["interactive"]
SAM2_MODELS = INTERACTIVE["sam2"]
EVAL_MODELS = planning.model_specs(config)  # base models, then every finetune run (its export)
INTERACTIVE_FIGURES = ["fig3a_dice_per_iteration", "fig3b_difference", "fig1b_interactive2d", "fig1c_interactive3d",
                       "fig7b_mask_prompts"]
INTERACTIVE_TABLES = ["interactive2d", "interactive2d_objects", "interactive2d_summary", "interactive2d_noc",
                      "interactive2d_difference", "interactive2d_comparisons", "interactive3d", "interactive3d_summary"]

SEMANTIC = config["semantic"]
BACKBONES = SEMANTIC["backbones"] if SEMANTIC["backbones"] is not None else list(config["models"]) + FINETUNE_RUNS
SEMANTIC_TABLES = ["results", "class_summary", "seed_stats", "paired_tests"]
SEMANTIC_FIGURES = {  # output name of semantic_aggregate -> file name
    "fig1d": "fig1d_semantic2d",
    "fig1e": "fig1e_semantic3d",
    "fig8": "fig8_semantic",
    "seeds": "fig6_semantic_seeds",
}


def one_of(names):
    """A wildcard constraint that matches exactly ``names`` (nothing for an empty list)."""
    return "|".join(map(re.escape, names)) or NEVER


# Jobs call the `medpipe` command of the Python that runs Snakemake, even in an unactivated venv.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
# glibc malloc: serve allocations below 32 MB from the heap and keep up to 1 GB of freed heap, instead
# of a fresh mmap (page faults, zeroing) for every large temporary tensor of the mask decoder: on CPU
# that halves the jobs' system time (docs/benchmarks.md); results do not depend on it. A value set in
# the environment wins.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")


envvars:
    "PATH",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",


wildcard_constraints:
    dataset=one_of(DATASETS),
    model=one_of(EVAL_MODELS),


# -- every rule --------------------------------------------------------------------------------
def canonical(value):
    """A config value as canonical JSON (sorted keys): a params value that changes only with the value."""
    return json.dumps(value, sort_keys=True, default=str)


def without_guards(section, *guards):
    """A config section less the keys that only decide whether a job may run (not tracked as params)."""
    return {key: value for key, value in section.items() if key not in guards}


def config_snapshot(wildcards, input):
    """The config snapshot a job reads (``--config``).

    A *derived* params value (the function takes ``input``), which Snakemake leaves out of its
    params-change check: its name changes with every config edit, while each rule's other params
    hold exactly the config values its jobs use.
    """
    return CONFIG_SNAPSHOT


def write_config_snapshot():
    """Write the snapshot the jobs read (`onstart`: the main Snakemake process, before any job)."""
    planning.write_resolved(config, CONFIG_SNAPSHOT)


def job_log(rule_name, name):
    return f"{R}/logs/{rule_name}/{name}.log"


def job_benchmark(rule_name, name):
    return f"{R}/benchmarks/{rule_name}/{name}.tsv"


def job_resources(section=None, *, mem_mb=1000, runtime=10, cpus_per_task=1):
    """A rule's resources: those of a config section (finetune, interactive, semantic: its `gpus`,
    `mem_mb`, `runtime`, `cpus_per_task`), or the given fixed sizes (profiles may override both per rule)."""
    if section is None:
        return dict(mem_mb=mem_mb, runtime=runtime, cpus_per_task=cpus_per_task)
    values = config[section]
    resources = dict(gpu=int(values.get("gpus", 0)), mem_mb=values["mem_mb"], runtime=values["runtime"],
                     cpus_per_task=values["cpus_per_task"])
    if "threads" in values:  # torch CPU threads of the job (0 = torch's default)
        resources["torch_threads"] = values["threads"]
    return resources


def device(wildcards, resources):
    """``cuda`` for a job that was given GPUs (its `gpu` or, on several nodes, `gpus_per_node` resource), else ``cpu``."""
    return "cuda" if int(resources.gpu) > 0 or int(getattr(resources, "gpus_per_node", 0) or 0) > 0 else "cpu"


# -- data --------------------------------------------------------------------------------------
def store(name):
    return f"{R}/data/{name}.zarr"


def split_table(name):
    return f"{R}/splits/{name}.tsv"


def glob_root(pattern):
    """The folder part of a glob before its first wildcard (`/data/x/*/img*.nii` -> `/data/x`)."""
    parts = PurePosixPath(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    if len(fixed) == len(parts):  # no wildcard: the file's folder
        fixed = fixed[:-1]
    return str(PurePosixPath(*fixed)) if fixed else "."


def ingest_inputs(wildcards):
    """The folders holding a dataset's raw files (or the synth folder that will hold them).

    Folders, not files: listing millions of raw files as inputs would make every dry run slow;
    adding or removing a file changes the folder's mtime, which still reruns the ingest. A
    `layout: sa_med2d` corpus is its JSON index file (it lists every image and mask).
    """
    spec = config["datasets"][wildcards.dataset]
    if "synth" in spec:
        return [f"{SYNTH_ROOT}/{wildcards.dataset}"]
    if spec.get("layout") == "sa_med2d":
        return [corpus_source_file(spec)]
    labels = spec["labels"] if isinstance(spec["labels"], str) else spec["labels"]["glob"]
    return sorted({glob_root(spec["images"]), glob_root(labels)})


def corpus_source_file(spec):
    """The file a corpus is read from: `root`/data.zip (wins when present), else the unpacked index."""
    if "root" not in spec:
        return spec["index"]
    archive = os.path.join(spec["root"], "data.zip")
    index = os.path.join(spec["root"], "SAMed2Dv1", "SAMed2D_v1.json")
    return index if not os.path.exists(archive) and os.path.exists(index) else archive


def ingest_part_count():
    """The scatter count of the ingest parts (`ingest.parts`, or `--set-scatter ingest_part=N`)."""
    return len(scatter.ingest_part("{scatteritem}"))
def raw_digest(wildcards):
    """Digest of the dataset's raw-file manifest (paths, sizes, mtimes): an ingest param, so an edited,
    added or removed raw file reruns the ingest (medpipe.data.manifest); synthetic data: its folder."""
    from medpipe.data.manifest import manifest_digest

    spec = config["datasets"][wildcards.dataset]
    return "synth" if "synth" in spec else manifest_digest(spec, skip=R)


def synth_size_args(wildcards):
    size = config["datasets"][wildcards.dataset]["synth"].get("size") or []
    return ["--size", *map(str, size)] if size else []


def previous_split_args(name):
    """`--previous FILE` when the user froze split tables in `splits.previous_dir`."""
    folder = config["splits"]["previous_dir"]
    path = os.path.join(folder, f"{name}.tsv") if folder else None
    return ["--previous", path] if path and os.path.exists(path) else []


def data_targets():
    return [split_table(name) for name in DATASETS] + ([split_table("corpus")] if FINETUNE_DATASETS else [])


# -- finetune ----------------------------------------------------------------------------------
def finetune_base_checkpoint(wildcards):
    """The base checkpoint file (an input, so a missing file is reported before the job runs); none for
    random init and for `bundled` weights (inside an installed package, verified when a job reads them)."""
    base = planning.checkpoint_file(planning.finetune_base_checkpoint(config, wildcards.run))
    return [base] if base else []


def finetune_launcher(wildcards, resources):
    """`torchrun` with one process per GPU for multi-GPU jobs; a plain process otherwise (argv words).
    On N > 1 nodes (resources `nodes`, `gpus_per_node`, `mpi`: README "Multi-node finetuning"): one
    launcher task per node under srun, rendezvous on the allocation's first node."""
    nodes = int(getattr(resources, "nodes", 1) or 1)
    if nodes > 1:
        per_node = int(getattr(resources, "gpus_per_node", 0) or 0)
        if per_node < 1 or not getattr(resources, "mpi", None):
            from snakemake.exceptions import WorkflowError

            raise WorkflowError(f"finetune on {nodes} nodes needs the resources gpus_per_node (>= 1) and mpi "
                                "(the job runs srun itself; README 'Multi-node finetuning')")
        return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "python", "-m",
                "medpipe.finetune.launch", f"--nproc-per-node={per_node}", "--"]
    gpus = int(resources.gpu)
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "-m", "medpipe"]
    return ["medpipe"]


def finetune_export_source(wildcards):
    """The training checkpoint a run exports (`export_checkpoint`: best or latest)."""
    which = planning.finetune_export_checkpoint(config, wildcards.run)
    return f"{R}/finetune/{wildcards.run}/{which}.pt"


def exported_model(run):
    return f"{R}/models/{run}.pth"


def finetune_targets():
    if not FINETUNE_RUNS:
        return []
    return [exported_model(run) for run in FINETUNE_RUNS] + [f"{R}/tables/compatibility.tsv"]


# -- interactive evaluation --------------------------------------------------------------------
GRID_POINT = "iou_threshold~{iou_threshold}/projection~{projection}/box_extension~{box_extension}"


def interactive_settings(*keys):
    """The keys of the `interactive` section a job uses, as canonical JSON."""
    return canonical({key: INTERACTIVE[key] for key in keys})


def eval_model(wildcards):
    """The evaluated model (type, checkpoint) as canonical JSON."""
    return canonical(asdict(EVAL_MODELS[wildcards.model]))


def eval_model_checkpoint(wildcards):
    """The model's weights file (a finetune export is built by the finetune stage), or none for random
    init and `bundled` weights."""
    weights = planning.checkpoint_file(EVAL_MODELS[wildcards.model].checkpoint)
    return [weights] if weights else []


def embedding_cache(wildcards):
    """The embedding cache a model reads: its own, or its base model's when it is a finetune run with a
    frozen image encoder (the same encoder weights, so the same embeddings; the job checks the digest)."""
    return f"{R}/embeddings/{planning.embedding_owner(config, wildcards.model)}/{wildcards.dataset}.zarr"


def dataset_roles(wildcards):
    return canonical(sorted(config["datasets"][wildcards.dataset].get("roles", [])))


def dataset_objects3d(wildcards):
    """The dataset's `interactive3d` key (classes evaluated, classes split into components) as canonical JSON."""
    return canonical(config["datasets"][wildcards.dataset].get("interactive3d", {}))


def sam2_checkpoint(wildcards):
    """The SAM2 model's weights and, for a config outside the sam2 package (trusted_sam2_configs), its file."""
    spec = SAM2_MODELS[wildcards.sam2]
    own_config = [spec["config"]] if spec["config"] in INTERACTIVE["trusted_sam2_configs"] else []
    return ([spec["checkpoint"]] if spec.get("checkpoint") else []) + own_config


def interactive_tables_2d(suffix=".tsv"):
    """eval2d's union tables, or with suffix ".objects.tsv" its per-object tables."""
    return [
        f"{R}/interactive2d/{model}/{dataset}/start~{start}/masks~{masks}{suffix}"
        for model in EVAL_MODELS
        for dataset in INTERACTIVE_2D
        for start in INTERACTIVE["starts"]
        for masks in INTERACTIVE["masks"]
    ]


def interactive_tables_3d():
    return [
        f"{R}/interactive3d/{model}/{dataset}/start~{start}/{table}.tsv"
        for model in EVAL_MODELS
        for dataset in INTERACTIVE_3D
        for start in INTERACTIVE["starts3d"]
        for table in ("test", "oracle")
    ]


def sam2_tables():
    return [f"{R}/interactive3d_sam2/{model}/{dataset}.tsv" for model in SAM2_MODELS for dataset in INTERACTIVE_3D]


def interactive_aggregate_outputs():
    """The tables and figures of `aggregate_interactive` (run when there is a 2D evaluation)."""
    return ([f"{R}/tables/{name}.tsv" for name in INTERACTIVE_TABLES]
            + [f"{R}/figures/{name}.{ext}" for name in INTERACTIVE_FIGURES for ext in ("png", "svg")])


def interactive_targets():
    aggregated = interactive_aggregate_outputs() if interactive_tables_2d() else []
    return (interactive_tables_2d() + interactive_tables_2d(".objects.tsv") + interactive_tables_3d() + sam2_tables()
            + aggregated)


# -- semantic segmentation ---------------------------------------------------------------------
def backbone_type(name):
    return config["models"][name]["type"] if name in config["models"] else planning.finetune_model_type(config, name)


def backbone_weights(name):
    """The backbone's SAM weights: a base checkpoint (a file, `bundled` or none = random init) or a finetune export."""
    if name in config["models"]:
        return config["models"][name].get("checkpoint")
    return exported_model(name)


def backbone_decoder(name):
    return f"{R}/models/{name}.decoder.pth"


def semantic_variants(method):
    """(backbone, decoder init) pairs a method runs with."""
    if method == "sam_unetr":
        return [(backbone, init) for backbone in BACKBONES for init in SEMANTIC["sam_unetr"]["decoder_inits"]
                if init == "random" or backbone in DECODER_RUNS]
    if method == "ma_sam":
        return [(backbone, "random") for backbone in BACKBONES]
    return [("none", "none")]


def semantic_datasets(method):
    return {"sam_unetr": SEMANTIC_2D, "ma_sam": SEMANTIC_3D}.get(method, SEMANTIC_2D + SEMANTIC_3D)


def semantic_run_tables():
    return [
        f"{R}/tables/semantic/runs/{method}/{dataset}/{backbone}.{init}/seed{seed}.tsv"
        for method in SEMANTIC["methods"]
        for dataset in semantic_datasets(method)
        for backbone, init in semantic_variants(method)
        for seed in SEMANTIC["seeds"]
    ]


def semantic_model_inputs(wildcards):
    """Weights the job reads (inputs, so a missing export is built or reported before the job runs)."""
    if wildcards.backbone == "none":
        return []
    weights = planning.checkpoint_file(backbone_weights(wildcards.backbone))
    files = [weights] if weights else []
    if wildcards.init == "pretrained":
        files.append(backbone_decoder(wildcards.backbone))
    return files


def semantic_model_args(wildcards):
    """`--model-type T [--checkpoint F] [--decoder-file F]` of a SAM-based method (argv words)."""
    if wildcards.backbone == "none":
        return []
    args = ["--model-type", backbone_type(wildcards.backbone)]
    weights = backbone_weights(wildcards.backbone)
    if weights:
        args += ["--checkpoint", weights]
    if wildcards.init == "pretrained":
        args += ["--decoder-file", backbone_decoder(wildcards.backbone)]
    return args


def semantic_figure(key):
    return f"{R}/figures/semantic/{SEMANTIC_FIGURES[key]}.png"


def semantic_aggregate_outputs():
    return ([f"{R}/tables/semantic/{name}.tsv" for name in SEMANTIC_TABLES]
            + [semantic_figure(key) for key in SEMANTIC_FIGURES])


def semantic_targets():
    return semantic_aggregate_outputs() if semantic_run_tables() else []


# -- rule all ----------------------------------------------------------------------------------
def all_targets():
    return data_targets() + finetune_targets() + interactive_targets() + semantic_targets()
