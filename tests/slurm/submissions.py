"""The sbatch line snakemake-executor-plugin-slurm builds for a rule under a profile, without a cluster.

The profile's resources (default-resources <- set-resources, each value evaluated as Snakemake does,
with ``attempt``) go into the plugin's own functions: partition choice from the profile's
partitions.yaml (``get_best_partition``), ``validate_slurm_extra``, ``get_submit_command`` and
``set_gres_string``, the same calls as its ``run_job``. What a real ``sbatch`` then accepts is
left to tests/test_slurm.py (a real SLURM) and to a real cluster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml


class Resources(dict):
    """Snakemake's job resources: ``.get`` and attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass
class FakeJob:
    name: str
    resources: Resources
    threads: int = 1

    def is_group(self) -> bool:
        return False


def evaluate(value, attempt: int):
    """A profile's resource value as Snakemake evaluates it (an expression of ``attempt``, else the text)."""
    if not isinstance(value, str):
        return value
    try:
        return eval(value, {"attempt": attempt})  # noqa: S307 (the repository's own profile)
    except (NameError, SyntaxError):
        return value


def load_profile(profile: Path) -> dict:
    return yaml.safe_load((profile / "config.yaml").read_text())


def rule_resources(profile: dict, rule: str, attempt: int, entry: dict | None = None) -> Resources:
    """default-resources <- the rule's set-resources entry (or ``entry`` in its place)."""
    if entry is None:
        entry = (profile.get("set-resources") or {}).get(rule) or {}
    values = {**(profile.get("default-resources") or {}), **entry}
    return Resources({key: evaluate(value, attempt) for key, value in values.items()})


def sbatch_line(profile_dir: Path, rule: str, attempt: int, entry: dict | None = None) -> tuple[str, str | None]:
    """(the sbatch command line, the partition the plugin picked) for ``rule`` at ``attempt``
    (``entry``: set-resources of the rule in place of the profile's)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    profile = load_profile(profile_dir)
    job = FakeJob(rule, rule_resources(profile, rule, attempt, entry))
    partitions = read_partition_file(profile_dir / profile["slurm-partition-config"])
    partition = get_best_partition(partitions, job, logging.getLogger("slurm-plugin"))
    validate_slurm_extra(job)
    account = job.resources.get("slurm_account")
    params = {"run_uuid": "RUN", "slurm_logfile": f"logs/slurm/rule_{rule}/%j.log", "comment_str": f"rule_{rule}",
              "account": f"-A {account}" if account else "", "partition": f"-p {partition}" if partition else "",
              "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job), partition


def commented_block(profile_dir: Path, header: str) -> dict:
    """A commented-out YAML block of the profile (``#   finetune:`` and its indented lines), parsed."""
    lines = (profile_dir / "config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"#   {header}")
    block = [lines[start].split("#", 1)[1]]
    for line in lines[start + 1:]:
        if not line.lstrip().startswith("#     "):
            break
        block.append(line.split("#", 1)[1])
    return yaml.safe_load("\n".join(block))[header.rstrip(":")]
