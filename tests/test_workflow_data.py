"""The data stage through Snakemake, from a temporary working directory."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medpipe.store import DatasetStore

pytestmark = pytest.mark.slow

DATA_TARGETS = ["results/splits/corpus.tsv"]


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a Snakemake (dry) run as {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["job", "count"])
    counts = {}
    for line in lines[start + 2 :]:
        name, count = line.split()
        if name == "total":
            return counts
        counts[name] = int(count)
    raise AssertionError("no total line in the job stats")


def snakemake(workdir: Path, repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args,
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory, request):
    repo_root = Path(request.config.rootpath)
    workdir = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    for spec in config["datasets"].values():
        spec["synth"].update(patients=3, images_per_patient=2)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(workdir, repo_root, "-n", *DATA_TARGETS)
    assert dry.returncode == 0, dry.stderr
    result = snakemake(workdir, repo_root, *DATA_TARGETS)
    assert result.returncode == 0, result.stderr[-3000:]
    return repo_root, workdir, config, dry.stdout + dry.stderr


def test_dry_run_lists_the_data_jobs(data_run):
    _, _, config, dry_output = data_run
    n = len(config["datasets"])
    counts = job_counts(dry_output)
    assert counts["synth"] == n and counts["ingest"] == n and counts["split"] == n
    assert counts["split_corpus"] == 1


def test_data_stage_outputs(data_run):
    _, workdir, config, _ = data_run
    for name, spec in config["datasets"].items():
        store = DatasetStore(workdir / f"results/data/{name}.zarr")
        assert store.ndim == spec["ndim"] and store.modality == spec["modality"]
        assert len(store.case_ids) == 3 * 2
        split = pd.read_csv(workdir / f"results/splits/{name}.tsv", sep="\t")
        assert sorted(split["case_id"]) == sorted(store.case_ids)
        assert (split.groupby("patient_id")["split"].nunique() == 1).all()
        assert (workdir / f"results/logs/ingest/{name}.log").exists()
        assert (workdir / f"results/benchmarks/ingest/{name}.tsv").exists()
    corpus = pd.read_csv(workdir / "results/splits/corpus.tsv", sep="\t")
    assert set(corpus["dataset"]) == set(config["datasets"])
    assert {"in_full", "in_p60"} <= set(corpus.columns)


def test_forcerun_split_reruns_only_splits(data_run):
    repo_root, workdir, config, _ = data_run
    result = snakemake(workdir, repo_root, "-n", "--forcerun=split", *DATA_TARGETS)
    assert result.returncode == 0, result.stderr
    assert set(job_counts(result.stdout + result.stderr)) == {"split", "split_corpus"}
