"""Parsing the workflow stays light: no torch (nor any model library) and no file written.

Every dry run and every cluster job's start parses the Snakefile, so the rule files import the
library only through the torch-free `medpipe.planning`. These tests run `snakemake -n` in a
subprocess that records `sys.modules` when it exits, on the demo and on the paper's study config,
and check that the dry run left nothing behind (the config snapshot is written only when jobs run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dag_fixtures import REPO_ROOT, placeholder_config

# libraries only jobs may load: a rule file importing one of them at parse time slows every dry run
# and every cluster job's start by seconds
HEAVY = ("torch", "torchvision", "segment_anything", "sam2", "nnunetv2", "monai", "tensorboard")

RECORD_MODULES = textwrap.dedent(
    """
    import atexit, json, os, sys

    def record():
        with open(os.environ["MEDPIPE_MODULES_OUT"], "w") as handle:
            json.dump(sorted(sys.modules), handle)

    atexit.register(record)
    from snakemake.cli import main

    sys.argv = ["snakemake", *sys.argv[1:]]
    main()
    """
)


def parse(workdir: Path, configfile: Path, snakefile: Path = REPO_ROOT / "Snakefile") -> tuple[str, set[str]]:
    """Dry-run the workflow in a fresh process; its output and the modules it had imported at exit."""
    modules_out = workdir.parent / f"{workdir.name}.modules.json"
    command = [sys.executable, "-c", RECORD_MODULES, "-s", str(snakefile), "--directory", str(workdir),
               "--configfile", str(configfile), "-n", "--quiet", "rules"]
    env = {**os.environ, "MEDPIPE_MODULES_OUT": str(modules_out),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output, set(json.loads(modules_out.read_text()))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def files_under(folder: Path) -> set[str]:
    """Every file and folder below ``folder``, except Snakemake's own `.snakemake/` bookkeeping."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if ".snakemake" not in p.relative_to(folder).parts}


@pytest.fixture
def demo(tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    configfile = tmp_path / "config.yaml"
    configfile.write_text((REPO_ROOT / "config" / "config.yaml").read_text())
    return workdir, configfile


def test_dry_run_of_the_demo_imports_no_torch_and_writes_nothing(demo):
    workdir, configfile = demo
    output, modules = parse(workdir, configfile)
    assert "interactive2d" in output  # the whole DAG was built, input functions included
    assert "medpipe.planning" in modules
    assert not heavy(modules), f"parsing the workflow imported {heavy(modules)}"
    assert files_under(workdir) == set(), "a dry run wrote files"


@pytest.mark.slow
def test_dry_run_of_the_study_imports_no_torch_and_writes_nothing(tmp_path):
    configfile, _ = placeholder_config(tmp_path / "tree", cases_per_dataset=1)
    workdir = tmp_path / "study"
    workdir.mkdir()
    output, modules = parse(workdir, configfile)
    assert "interactive3d_sam2" in output and "finetune" in output
    assert not heavy(modules), f"parsing the workflow imported {heavy(modules)}"
    assert files_under(workdir) == set(), "a dry run wrote files"


def test_the_check_fails_when_a_rule_file_imports_torch(demo, tmp_path):
    """The check above can fail: a workflow that imports torch at parse time is caught."""
    workdir, configfile = demo
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(f"import torch\n\ninclude: {str(REPO_ROOT / 'Snakefile')!r}\n")
    _, modules = parse(workdir, configfile, snakefile)
    assert "torch" in heavy(modules)


def test_planning_imports_no_torch():
    code = f"import sys, medpipe.planning; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_bad_results_dir_is_named_before_anything_runs(demo):
    workdir, configfile = demo
    config = yaml.safe_load(configfile.read_text())
    config["results_dir"] = "/"
    configfile.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "-n"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{configfile}: results_dir: must be a non-empty path other than '/'" in result.stdout + result.stderr
