"""Profiles SLURM accepts: the sbatch line of every rule at every attempt under each SLURM profile, built
by the executor plugin's own functions, checked against the profile's partitions.yaml; multi-node
finetuning's resources and launch line; profiles/local schedules by threads."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT
from slurm.submissions import commented_block, load_profile, rule_resources, sbatch_line

SLURM_PROFILES = ["slurm-a100", "slurm-smoke"]
TRAINING_RULES = ("finetune", "semantic_run")


def _rules():
    rules = set()
    for path in (REPO_ROOT / "workflow" / "rules").glob("*.smk"):
        for line in path.read_text().splitlines():
            if line.startswith("rule ") or line.startswith("use rule "):
                words = line.replace(":", " ").split()
                rules.add(words[words.index("as") + 1] if "as" in words else words[1])
    return sorted(rules)


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_every_rule_at_every_attempt_fits_a_partition(name):
    profile_dir = REPO_ROOT / "profiles" / name
    profile = load_profile(profile_dir)
    partitions = yaml.safe_load((profile_dir / profile["slurm-partition-config"]).read_text())["partitions"]
    assert set(profile["set-resources"]) == set(_rules())  # every rule sized
    lines = []
    for rule in _rules():
        for attempt in range(1, int(profile.get("retries", 0)) + 2):
            line, partition = sbatch_line(profile_dir, rule, attempt)
            lines.append(f"{rule} attempt {attempt}: {line}")
            assert partition is not None, lines[-1]  # the plugin found a partition that fits
            limits = partitions[partition]
            resources = rule_resources(profile, rule, attempt)
            assert resources["runtime"] <= limits["max_runtime"], lines[-1]  # retries stay within MaxTime
            gpus = int(resources.get("gpu", 0))
            assert gpus <= limits.get("max_gpu", 0), lines[-1]
            assert f" -p {partition} " in line and f"-t {resources['runtime']}" in line
            if gpus:
                assert f"--gpus=a100:{gpus}" in line and "--ntasks-per-gpu" not in line, lines[-1]
            if rule in TRAINING_RULES:  # SIGTERM ahead of the limit: the trainers checkpoint and exit
                assert "--signal=TERM@" in line and "B:" not in line, lines[-1]
    print("\n".join(lines))


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_no_gpu_rule_is_grouped_and_the_submission_rate_is_honoured(name):
    profile = load_profile(REPO_ROOT / "profiles" / name)
    for rule in profile.get("groups") or {}:
        assert not rule_resources(profile, rule, 1).get("gpu"), rule  # a group would sum its members' GPUs
    assert "max-jobs-per-second" not in profile  # ignored by Snakemake 9 next to max-jobs-per-timespan
    assert profile["max-jobs-per-timespan"] == "5/1s"


def test_smoke_profile_is_small():
    profile = load_profile(REPO_ROOT / "profiles" / "slurm-smoke")
    for rule in _rules():
        resources = rule_resources(profile, rule, 1)
        assert int(resources.get("gpu", 0)) <= 1 and resources["mem_mb"] <= 16000 and resources["runtime"] <= 30


def test_multi_node_finetune_submits_one_launcher_task_per_node_with_per_node_gpus():
    profile_dir = REPO_ROOT / "profiles" / "slurm-a100"
    block = commented_block(profile_dir, "finetune:")  # the README's and the profile's documented entry
    line, partition = sbatch_line(profile_dir, "finetune", 1, block)  # in place of the single-node entry
    assert partition == "gpu"
    for part in ("--nodes=2", "--ntasks=2", "--gres=gpu:a100:4", "--cpus-per-task=32", "--signal=TERM@600"):
        assert part in line, line
    assert "--gpus=" not in line and "--ntasks-per-gpu" not in line, line


def _finetune_dry_run(tmp_path, *resources):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        f'configfile: "{REPO_ROOT}/config/config.yaml"\n'
        f'include: "{REPO_ROOT}/workflow/rules/common.smk"\n'
        "rule all:\n    input: lambda wildcards: TARGETS,\n    default_target: True\n"
        f'include: "{REPO_ROOT}/workflow/rules/data.smk"\n'
        f'include: "{REPO_ROOT}/workflow/rules/finetune.smk"\n')
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    return subprocess.run([snakemake, "-n", "-p", "--cores", "2", "-s", str(snakefile), "-d", str(tmp_path),
                           "results/finetune/medsam_demo/training.json", "--set-resources",
                           *[f"finetune:{r}" for r in resources]], capture_output=True, text=True, timeout=120)


def test_multi_node_finetune_launch_line_and_refusal(tmp_path):
    result = _finetune_dry_run(tmp_path, "nodes=2", "gpus_per_node=4", "gpu=0", "mpi='srun'")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 python -m medpipe.finetune.launch "
            "--nproc-per-node=4 -- finetune medsam_demo") in result.stdout
    assert "--device cuda" in result.stdout  # per-node GPUs make it a GPU job
    refused = _finetune_dry_run(tmp_path, "nodes=2", "gpu=8")  # one task on two nodes: rejected
    assert refused.returncode != 0
    assert "finetune on 2 nodes needs the resources gpus_per_node" in refused.stdout + refused.stderr


def test_local_profile_schedules_by_threads():
    profile = load_profile(REPO_ROOT / "profiles" / "local")
    assert {"finetune", "ingest", "interactive2d", "semantic_run"} <= set(profile["set-threads"])
    text = (REPO_ROOT / "profiles" / "local" / "config.yaml").read_text()
    assert "--resources gpu=1" not in text  # would never start the study's multi-GPU finetune


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_jobs_get_the_threads_of_their_cpus(name):
    """Snakemake sets OMP_NUM_THREADS (torch's CPU threads) to a job's threads, 1 unless set."""
    profile = load_profile(REPO_ROOT / "profiles" / name)
    for rule in _rules():
        resources = rule_resources(profile, rule, 1)
        cpus = int(resources["cpus_per_task"])
        per_process = cpus // int(resources.get("gpu") or 1) if rule == "finetune" else cpus
        assert profile["set-threads"].get(rule, 1) == per_process, rule
