"""`snakemake --lint` on the demo and on the paper's study config; exit 1 on any finding.

The study config points at /path/to placeholders, so it is linted on a placeholder tree
(tests/dag_fixtures.py), as the DAG tests dry-run it. One lint is accepted, for the reason below.

    .venv/bin/python .ci/lint_workflow.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from dag_fixtures import placeholder_config, snakemake  # noqa: E402

# Jobs run the `medpipe` command of the environment that runs Snakemake, which pyproject.toml pins
# and scripts/setup.sh installs; no conda channel or container registry can be reached to build,
# test or pin a per-rule environment for it, so this lint is accepted.
ACCEPTED = {"Specify a conda environment or container for each rule."}


def findings(output: str) -> list[str]:
    """`<where>: <title>` for every lint in Snakemake's text output (`--lint json` is ignored by its CLI)."""
    found, where = [], None
    for line in output.splitlines():
        if match := re.match(r"^Lints for (.+):$", line):
            where = match.group(1)
        elif match := re.match(r"^    \* (.+):$", line):
            found.append(f"{where}: {match.group(1)}")
    return found


def lint(name: str, workdir: Path, configfile: Path) -> list[str]:
    result = snakemake(workdir, configfile, "--lint")
    output = result.stdout + result.stderr
    found = findings(output)
    if result.returncode not in (0, 1) or (result.returncode == 1 and not found):
        return [f"{name}: snakemake --lint failed (exit {result.returncode}):\n{output[-3000:]}"]
    return [f"{name}: {finding}" for finding in found if finding.split(": ", 1)[1] not in ACCEPTED]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "demo").mkdir()
        study, _ = placeholder_config(root / "study", cases_per_dataset=1)
        problems = lint("config/config.yaml", root / "demo", REPO_ROOT / "config" / "config.yaml")
        problems += lint("config/study.yaml", root / "study", study)
    for problem in problems:
        print(problem)
    print(f"snakemake --lint: {len(problems)} finding(s) on config/config.yaml and config/study.yaml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
