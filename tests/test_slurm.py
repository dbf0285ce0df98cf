"""The SLURM execution path, on a real single-node SLURM (tests/slurm/cluster.py).

Proves what a cluster user relies on: jobs reach the right partition with the GPUs they ask for
(`--gpus=a100:N`), small jobs are grouped into one allocation, the demo study's jobs all finish
through the executor plugin with the test profile, and a cancelled (preempted) finetune job
resumes from its checkpoint when rerun.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from demo_fixtures import tiny_demo_config
from slurm.cluster import slurm_cluster  # noqa: F401  (session fixture: the running cluster)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE = REPO_ROOT / "tests" / "slurm" / "profile"
DATA_TARGETS = ["results/splits/corpus.tsv"]
SLURM_DATASETS = ["demo_xray", "demo_ct"]  # 2D and 3D, both in the finetuning corpus
FINETUNE_ITERATIONS = 80


def _env(cluster) -> dict:
    return {**cluster.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{cluster.env['PATH']}"}


def snakemake_command(workdir: Path, *args: str, snakefile: Path = REPO_ROOT / "Snakefile") -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
            "--profile", str(PROFILE), *args]


def run_snakemake(cluster, workdir: Path, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(snakemake_command(workdir, *args, **kwargs), capture_output=True, text=True,
                            env=_env(cluster), timeout=timeout)
    return result


def run_id(output: str) -> str:
    """The executor's SLURM run id: the job name of every sbatch of that Snakemake call."""
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, f"no SLURM run ID in the Snakemake output:\n{output[-3000:]}"
    return match.group(1)


def jobs_of(cluster, output: str) -> list[dict]:
    name = run_id(output)
    return [job for job in cluster.jobs() if job["name"] == name]


def workflow_has_rule(name: str) -> bool:
    """Whether a rule file included by the Snakefile defines rule `name` (cheaper than parsing the workflow)."""
    included = re.findall(r'^include:\s*"([^"]+)"', (REPO_ROOT / "Snakefile").read_text(), re.M)
    return any(re.search(rf"^rule {name}:", (REPO_ROOT / path).read_text(), re.M) for path in included)


HOSTNAME_SNAKEFILE = """
rule all:
    input: "cpu.txt", "gpu1.txt", "gpu8.txt", expand("small/{i}.txt", i=range(3))

rule cpu_host:
    output: "cpu.txt"
    resources: mem_mb=200, runtime=2, cpus_per_task=1
    shell: "hostname > {output}; echo $SLURM_JOB_PARTITION >> {output}; echo $SLURM_JOB_ID >> {output}"

rule gpu_host:
    output: "gpu{n}.txt"
    resources: mem_mb=200, runtime=2, cpus_per_task=1, gpu=lambda wc: int(wc.n), gpu_model="a100"
    shell: "hostname > {output}; echo $SLURM_JOB_PARTITION >> {output}; echo $CUDA_VISIBLE_DEVICES >> {output}"

rule tiny:
    output: "small/{i}.txt"
    group: "tiny"
    resources: mem_mb=100, runtime=1, cpus_per_task=1
    shell: "echo $SLURM_JOB_ID > {output}"
"""


def test_jobs_reach_partitions_with_their_gpus_and_small_jobs_are_grouped(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(HOSTNAME_SNAKEFILE)
    result = run_snakemake(slurm_cluster, tmp_path, "--group-components", "tiny=10", snakefile=tmp_path / "Snakefile",
                           timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + slurm_cluster.logs()
    cpu = (tmp_path / "cpu.txt").read_text().split()
    assert cpu[1] == "cpu"  # CPU jobs go to the CPU partition
    for n in (1, 8):
        host, partition, devices = (tmp_path / f"gpu{n}.txt").read_text().split()
        assert partition == "gpu"
        assert len(devices.split(",")) == n  # --gpus=a100:n gave the job exactly n (fake) GPUs
    # the three independent `tiny` jobs (group `tiny`, 10 components per submission) shared one allocation
    ids = {(tmp_path / f"small/{i}.txt").read_text().strip() for i in range(3)}
    assert len(ids) == 1
    jobs = jobs_of(slurm_cluster, output)
    assert len(jobs) == 4 and all(job["state"] == "COMPLETED" for job in jobs), jobs
    gpu8 = [job for job in jobs if job["comment"].endswith("wildcards_8")]
    assert len(gpu8) == 1
    assert "gpu:a100:8" in slurm_cluster.job_info(gpu8[0]["id"])


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory):
    """The demo config cut to one 2D and one 3D dataset (2 real cores run every job), and one short
    finetune run with a checkpoint every 2 iterations."""
    workdir = tmp_path_factory.mktemp("slurm_demo")
    config = tiny_demo_config()
    config["datasets"] = {name: config["datasets"][name] for name in SLURM_DATASETS}
    for spec in config["datasets"].values():
        spec["synth"].update(patients=3, images_per_patient=2)
    finetune = config.get("finetune")
    if finetune and finetune.get("runs"):
        name = "medsam_demo" if "medsam_demo" in finetune["runs"] else next(iter(finetune["runs"]))
        finetune["runs"] = {name: {**finetune["runs"][name], "iterations": FINETUNE_ITERATIONS}}
        finetune["defaults"].update(checkpoint_every=2, val_every=1000, val_batches=1, batch_size=1)
    models = set(config.get("models", {})) | set((finetune or {}).get("runs", {}))
    semantic = config.get("semantic") or {}
    if semantic.get("backbones"):  # drop backbones that name the finetune runs cut above
        semantic["backbones"] = [name for name in semantic["backbones"] if name in models]
    aggregate = config.setdefault("aggregate", {})  # and the comparisons that name them
    aggregate["comparisons"] = {name: spec for name, spec in (aggregate.get("comparisons") or {}).items()
                                if all(side["model"] in models for side in spec.values())}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir, config


def test_demo_data_stage_runs_through_slurm(slurm_cluster, demo_workdir):
    workdir, config = demo_workdir
    result = run_snakemake(slurm_cluster, workdir, *DATA_TARGETS, "--configfile", str(workdir / "config.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = jobs_of(slurm_cluster, output)
    # each dataset's data chain (group `data` of the test profile) in one sbatch, split_corpus in another
    assert sorted(job["comment"].split("_")[1] for job in jobs) == ["data"] * len(SLURM_DATASETS) + ["split"], jobs
    assert all(job["state"] == "COMPLETED" for job in jobs), jobs
    assert all(job["partition"] == "cpu" for job in jobs)
    n = len(config["datasets"])
    assert sum("Finished jobid" in line and "(Rule: ingest)" in line for line in output.splitlines()) == n
    corpus = pd.read_csv(workdir / "results/splits/corpus.tsv", sep="\t")
    assert set(corpus["dataset"]) == set(config["datasets"])
    for name in config["datasets"]:
        for rule in ("synth", "ingest", "split"):
            assert (workdir / f"results/logs/{rule}/{name}.log").exists()
            assert (workdir / f"results/benchmarks/{rule}/{name}.tsv").exists()


def _latest_iteration(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])


def test_cancelled_finetune_job_is_resubmitted_and_resumes_from_its_checkpoint(slurm_cluster, demo_workdir):
    """Cancel (= preempt) the running finetune job; the executor resubmits it (profile `retries`) and
    the new job continues from latest.pt instead of starting from zero."""
    workdir, config = demo_workdir
    if not workflow_has_rule("finetune"):
        pytest.skip("the workflow has no `finetune` rule (workflow/rules/finetune.smk not included in the Snakefile)")
    run = next(iter(config["finetune"]["runs"]))
    target = f"results/finetune/{run}/training.json"
    latest = workdir / f"results/finetune/{run}/latest.pt"
    args = [target, "--retries", "1", "--configfile", str(workdir / "config.yaml")]
    process = subprocess.Popen(snakemake_command(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=_env(slurm_cluster))
    try:
        def running_finetune():
            jobs = [j for j in slurm_cluster.jobs()
                    if j["comment"].startswith("rule_finetune") and j["state"] == "RUNNING"]
            return jobs and latest.exists() and _latest_iteration(latest) >= 4 and jobs[0]

        job = slurm_cluster.wait(running_finetune, 240, "a running finetune job with a checkpoint", interval=1)
        slurm_cluster.run("scancel", job["id"])

        def state():
            return slurm_cluster.run("squeue", "-h", "-t", "all", "-j", job["id"], "-o", "%T").stdout.strip()

        slurm_cluster.wait(lambda: state() == "CANCELLED", 30, "the cancelled job to end")
        done_before = _latest_iteration(latest)  # the retry is submitted only after the next status check
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output[-4000:]
    assert 4 <= done_before < FINETUNE_ITERATIONS
    finetune_jobs = [j for j in jobs_of(slurm_cluster, output) if j["comment"].startswith("rule_finetune")]
    assert sorted(j["state"] for j in finetune_jobs) == ["CANCELLED", "COMPLETED"], finetune_jobs
    log = (workdir / f"results/logs/finetune/{run}.log").read_text()  # the log of the resubmitted job
    resumed = re.search(r"resuming \S+ from \S+ at iteration (\d+)", log)
    assert resumed, log[-2000:]
    assert int(resumed.group(1)) == done_before  # continued from the checkpoint, not from zero
    metrics = pd.read_csv(workdir / f"results/finetune/{run}/metrics.csv")
    train = metrics[metrics["split"] == "train"]
    assert sorted(train["iteration"]) == list(range(1, FINETUNE_ITERATIONS + 1))  # every iteration logged once
    assert _latest_iteration(latest) == FINETUNE_ITERATIONS
    assert (workdir / target).exists()
