"""Config-derived paths reach the jobs' shell commands quoted: spaces, quotes and `$(...)` are data.

A `results_dir` and a checkpoint path holding a space, a quote and a command substitution go through
every rule's command (dry run with `-p`, each command split the way the shell splits it) and, slow,
through the data stage for real (synth, ingest, split), which must run nothing it finds in a path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dag_fixtures import REPO_ROOT, job_counts
from demo_fixtures import tiny_demo_config

NASTY_RESULTS = "res ults/it's $(touch PWNED)"
NASTY_CHECKPOINT = "ckpt dir/it's $(touch PWNED).pth"


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def nasty_config(workdir: Path, datasets=None) -> dict:
    config = tiny_demo_config()
    config["results_dir"] = NASTY_RESULTS
    if datasets:
        config["datasets"] = {name: config["datasets"][name] for name in datasets}
        for spec in config["datasets"].values():
            spec["synth"].update(patients=3, images_per_patient=2)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def test_every_shell_command_keeps_config_paths_whole(tmp_path):
    config = nasty_config(tmp_path)
    config["models"]["sam_tiny"]["checkpoint"] = NASTY_CHECKPOINT  # a base checkpoint: finetune, semantic, eval
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / NASTY_CHECKPOINT).parent.mkdir()
    (tmp_path / NASTY_CHECKPOINT).touch()
    dry = snakemake(tmp_path, "-n", "-p")
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output[-4000:]
    commands = [line.removeprefix("Shell command: ") for line in output.splitlines()
                if line.startswith("Shell command: ") and line != "Shell command: None"]  # `all` has none
    assert len(commands) == sum(job_counts(output).values()) - 1  # every job but `all` runs a command
    seen_checkpoint = set()
    for command in commands:
        words = shlex.split(command)
        for word in words:
            if "ults" in word or "touch" in word or "PWNED" in word:
                assert word.startswith(NASTY_RESULTS + "/") or word == NASTY_CHECKPOINT, (word, command)
            if word == NASTY_CHECKPOINT:
                seen_checkpoint.add(words[1])
        assert any(word.startswith(NASTY_RESULTS + "/") for word in words), command  # every job logs there
    # semantic-run --checkpoint (SAM-UNETR, MA-SAM on the base model), check-compat --base (its label)
    assert seen_checkpoint == {"semantic-run", "check-compat"}
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.slow
def test_data_stage_runs_with_spaces_quotes_and_substitutions_in_results_dir(tmp_path):
    workdir = tmp_path / "work dir's"
    workdir.mkdir()
    config = nasty_config(workdir, datasets=["demo_xray", "demo_ct"])
    results = workdir / NASTY_RESULTS
    target = f"{NASTY_RESULTS}/splits/corpus.tsv"
    run = snakemake(workdir, target)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert job_counts(output) == {"synth": 2, "ingest": 2, "split": 2, "split_corpus": 1}
    for name in config["datasets"]:
        table = pd.read_csv(results / f"splits/{name}.tsv", sep="\t")
        assert len(table) == 3 * 2 and set(table["split"]) <= {"train", "val", "test"}
        for rule in ("synth", "ingest", "split"):
            assert (results / f"logs/{rule}/{name}.log").is_file()
        assert (results / f"splits/ledger/{name}.tsv").is_file()
    corpus = pd.read_csv(results / "splits/corpus.tsv", sep="\t")
    assert set(corpus["dataset"]) == set(config["datasets"])
    assert len(list((results / ".medpipe").glob("config-*.yaml"))) == 1
    assert not list(tmp_path.rglob("PWNED")), "a command substitution in results_dir ran"
    again = snakemake(workdir, "-n", target)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
