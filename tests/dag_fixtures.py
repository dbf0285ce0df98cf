"""Dry runs of the workflow on a placeholder raw tree (built by :mod:`medpipe.placeholders`).

Why: `snakemake -n` on the paper's study (config/study.yaml) must build the whole DAG without the
real data. Used by tests/test_dag.py and benchmarks/dryrun.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from medpipe.placeholders import (  # noqa: F401 (re-exported: the builder lives in src for users)
    CHECKPOINT_PLACEHOLDER,
    DATA_PLACEHOLDER,
    STUDY,
    case_names,
    label_glob,
    placeholder_config,
    write_index,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``configfile`` in ``workdir`` (targets may go in ``args``)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               *args, "--configfile", str(configfile)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The `job  count` table Snakemake prints for a dry run, without its `total` line."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] == "total":
                    break
                counts[parts[0]] = int(parts[1])
    return counts


def timed_dry_run(workdir: Path, configfile: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = snakemake(workdir, configfile, "-n", "--quiet", "rules", *args)
    return time.perf_counter() - start, result


def params_changed_outputs(summary: str) -> set[str]:
    """The outputs that `snakemake --summary` marks `params changed`: their jobs rerun because a
    config value they use was edited.

    (`--list-params-changes` of Snakemake 9.27 cannot tell this: it lists one output of every job,
    changed or not, because a ParamsChange iterates its files even when it holds no change.)
    """
    rows = [line.split("\t") for line in summary.splitlines()]
    header = next((row for row in rows if row[0] == "output_file"), None)
    assert header, f"no --summary table in:\n{summary[-2000:]}"
    status = header.index("status")
    return {row[0] for row in rows if len(row) > status and row[status] == "params changed"}
