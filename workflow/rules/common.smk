# Shared helpers of every stage: paths, the resolved config snapshot, dataset selection, targets.
import glob
import json
import os
import sys

from medpipe.config import datasets_with_role, validate_config, write_resolved

validate_config(config, source="snakemake config")

# Jobs call the `medpipe` command of the Python that runs Snakemake, even in an unactivated venv.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

R = config["results_dir"]
# Every job reads the validated config from this snapshot, so command-line overrides reach it;
# it is rewritten only when the config changes.
CONFIG = str(write_resolved(config, f"{R}/.medpipe/config.yaml"))
DATASETS = list(config["datasets"])
SYNTH_ROOT = "raw/demo"
# Outputs of every stage that `rule all` builds; each stage file adds its own.
TARGETS = []


wildcard_constraints:
    dataset="|".join(DATASETS),


def dataset_spec(name):
    """The dataset's config entry as JSON: a params value, so editing it reruns its jobs."""
    return json.dumps(config["datasets"][name], sort_keys=True, default=str)


def synth_dir(name):
    return f"{SYNTH_ROOT}/{name}"


def glob_root(pattern):
    """The folder part of a glob before its first wildcard (`/data/x/*/img*.nii` -> `/data/x`)."""
    parts = []
    for part in pattern.split("/"):
        if glob.has_magic(part):
            break
        parts.append(part)
    root = "/".join(parts[:-1] if len(parts) == len(pattern.split("/")) else parts)
    return root or "."


def ingest_inputs(wildcards):
    """The folders holding a dataset's raw files (or the synth folder that will hold them).

    Folders, not files: listing millions of raw files as inputs would make every dry run slow;
    adding or removing a file changes the folder's mtime, which still reruns the ingest.
    """
    spec = config["datasets"][wildcards.dataset]
    if "synth" in spec:
        return [synth_dir(wildcards.dataset)]
    return sorted({glob_root(spec["images"]), glob_root(spec["labels"])})


def stores(names):
    return [f"{R}/data/{name}.zarr" for name in names]


def split_tables(names):
    return [f"{R}/splits/{name}.tsv" for name in names]


def gpu_count(section):
    """GPUs a stage's jobs request (0 on the demo, so they run on CPU)."""
    return int(config.get(section, {}).get("gpus", 0))


def previous_split_args(name):
    """`--previous FILE` when the user froze split tables in `splits.previous_dir`."""
    folder = config["splits"]["previous_dir"]
    path = os.path.join(folder, f"{name}.tsv") if folder else None
    return f"--previous {path}" if path and os.path.exists(path) else ""
