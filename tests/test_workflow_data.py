"""The data stage through Snakemake, from a temporary working directory."""

import copy
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medpipe.store import DatasetStore

from dag_fixtures import params_changed_outputs

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


def snakemake(workdir: Path, repo_root: Path, *args: str, configfile: Path | None = None
              ) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(configfile or workdir / "config.yaml"), "--cores", "2", *args,
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
    corpora = [name for name, spec in config["datasets"].items() if spec.get("layout") == "sa_med2d"]
    assert corpora == ["demo_sa_med2d"]
    assert counts["synth"] == n and counts["ingest"] == n - 1 and counts["split"] == n
    parts = config["ingest"]["parts"]
    assert counts["ingest_plan"] == counts["ingest_gather"] == 1 and counts["ingest_part"] == parts == 2
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
        rule = "ingest_gather" if spec.get("layout") == "sa_med2d" else "ingest"
        assert store.layout == ("packed" if rule == "ingest_gather" else "cases")
        assert store.object_table() is not None and len(store.object_table()) > 0
        assert (workdir / f"results/logs/{rule}/{name}.log").exists()
        assert (workdir / f"results/benchmarks/{rule}/{name}.tsv").exists()
    corpus = pd.read_csv(workdir / "results/splits/corpus.tsv", sep="\t")
    assert set(corpus["dataset"]) == set(config["datasets"])
    assert {"in_full", "in_p60"} <= set(corpus.columns)


def test_forcerun_split_reruns_only_splits(data_run):
    repo_root, workdir, config, _ = data_run
    result = snakemake(workdir, repo_root, "-n", "--forcerun=split", *DATA_TARGETS)
    assert result.returncode == 0, result.stderr
    assert set(job_counts(result.stdout + result.stderr)) == {"split", "split_corpus"}


def params_changes(workdir: Path, repo_root: Path, configfile: Path) -> set[str]:
    """The outputs whose jobs would rerun because their params changed."""
    result = snakemake(workdir, repo_root, "--summary", *DATA_TARGETS, configfile=configfile)
    assert result.returncode == 0, result.stderr[-3000:]
    return params_changed_outputs(result.stdout)


def test_jobs_read_the_config_snapshot_they_were_scheduled_under(data_run):
    _, workdir, _, _ = data_run
    snapshots = list((workdir / "results/.medpipe").glob("config-*.yaml"))
    assert len(snapshots) == 1, snapshots  # written once when the jobs ran, named by its content
    digest = hashlib.sha256(snapshots[0].read_bytes()).hexdigest()[:12]
    assert snapshots[0].name == f"config-{digest}.yaml"
    assert not (workdir / "results/.medpipe/config.yaml").exists()


def test_reordered_config_keys_rerun_nothing(data_run, tmp_path):
    repo_root, workdir, config, _ = data_run
    reordered = copy.deepcopy(config)
    reordered["splits"] = {"fractions": dict(reversed(list(config["splits"]["fractions"].items())))}
    reordered["datasets"] = {name: dict(reversed(list(spec.items()))) for name, spec in config["datasets"].items()}
    configfile = tmp_path / "reordered.yaml"
    configfile.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert params_changes(workdir, repo_root, configfile) == set()
    dry = snakemake(workdir, repo_root, "-n", *DATA_TARGETS, configfile=configfile)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]


def test_edited_split_fractions_rerun_the_split_jobs_only(data_run, tmp_path):
    repo_root, workdir, config, _ = data_run
    edited = copy.deepcopy(config)
    edited["splits"] = {"fractions": {"train": 0.4, "val": 0.3, "test": 0.3}}
    configfile = tmp_path / "edited.yaml"
    configfile.write_text(yaml.safe_dump(edited))
    split_tables = {f"results/splits/{name}.tsv" for name in config["datasets"]}
    assert params_changes(workdir, repo_root, configfile) == split_tables
    dry = snakemake(workdir, repo_root, "-n", *DATA_TARGETS, configfile=configfile)
    assert dry.returncode == 0, dry.stderr[-3000:]
    n = len(config["datasets"])
    assert job_counts(dry.stdout + dry.stderr) == {"split": n, "split_corpus": 1}  # the corpus reads the splits


def test_a_lost_ingest_part_reruns_alone_and_gives_the_same_store(data_run):
    """A part killed in the first run (it leaves only a .partial folder, and the gather never ran) is
    the only ingest part to run again; the gathered store is byte-identical to an uninterrupted run."""
    repo_root, workdir, _, _ = data_run
    store = workdir / "results/data/demo_sa_med2d.zarr"
    before = {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    part = workdir / "results/data/demo_sa_med2d.parts/2-of-2.zarr"
    part.rename(part.with_name(f"{part.name}.partial-999999999"))  # what a killed part leaves behind
    shutil.rmtree(store)
    dry = snakemake(workdir, repo_root, "-n", "results/data/demo_sa_med2d.zarr")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert job_counts(dry.stdout + dry.stderr) == {"ingest_part": 1, "ingest_gather": 1}
    result = snakemake(workdir, repo_root, "results/data/demo_sa_med2d.zarr")
    assert result.returncode == 0, result.stderr[-3000:]
    after = {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    assert after == before
    assert not list(part.parent.glob("*.partial-*"))  # the stale partial folder was removed


def test_set_scatter_changes_the_number_of_parts(data_run):
    repo_root, workdir, _, _ = data_run
    dry = snakemake(workdir, repo_root, "-n", "results/data/demo_sa_med2d.zarr", "--set-scatter", "ingest_part=3")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["ingest_part"] == 3 and counts["ingest_plan"] == 1


def test_edited_part_count_replans_the_corpus_only(data_run, tmp_path):
    repo_root, workdir, config, _ = data_run
    edited = copy.deepcopy(config)
    edited["ingest"] = {**config["ingest"], "parts": 3}
    configfile = tmp_path / "edited.yaml"
    configfile.write_text(yaml.safe_dump(edited))
    assert params_changes(workdir, repo_root, configfile) == {"results/data/demo_sa_med2d.plan"}
