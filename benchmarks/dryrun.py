"""Time of `snakemake -n` on the paper's study (config/study.yaml) against the number of raw files.

Builds a placeholder raw tree (empty files matching every dataset's globs, see
tests/dag_fixtures.py) with N cases per dataset and times the dry run of the whole workflow, with
and without the slurm-a100 profile. Goal: the full study's DAG in < 10 s. The table also reports
seconds per thousand raw files, to extrapolate to the real corpus (SA-Med2D-20M: 3.7M images +
their labels); ingest jobs take the dataset folders as inputs, so this term should stay near zero.

    python benchmarks/dryrun.py                       # N = 2, 200, 2000
    python benchmarks/dryrun.py --cases 2 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dag_fixtures import REPO_ROOT, job_counts, placeholder_config, timed_dry_run  # noqa: E402

log = logging.getLogger("dryrun")


def measure(cases: int, repeat: int, profile: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="medpipe-dryrun-") as tmp:
        root = Path(tmp)
        configfile, config = placeholder_config(root, cases_per_dataset=cases)
        extra = ["--profile", str(REPO_ROOT / "profiles" / "slurm-a100")] if profile else []
        times, jobs = [], 0
        for _ in range(repeat):
            seconds, result = timed_dry_run(root, configfile, *extra)
            if result.returncode != 0:
                raise RuntimeError(f"dry run failed:\n{result.stderr[-3000:]}")
            times.append(seconds)
            jobs = sum(job_counts(result.stdout + result.stderr).values())
        files = 2 * cases * len(config["datasets"])
        return {"cases": cases, "datasets": len(config["datasets"]), "raw_files": files, "jobs": jobs,
                "profile": "slurm-a100" if profile else "-", "median_s": statistics.median(times),
                "min_s": min(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[2, 200, 2000], help="cases per dataset")
    parser.add_argument("--repeat", type=int, default=3, help="dry runs per setting (median reported)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for cases in args.cases:
        for profile in (False, True) if cases == args.cases[0] else (False,):
            row = measure(cases, args.repeat, profile)
            log.info("%s", row)
            rows.append(row)
    print(f"\nmachine: {platform.node()} ({platform.processor() or platform.machine()}), "
          f"python {platform.python_version()}\n")
    print("| cases/dataset | datasets | raw files | jobs | profile | median s | min s |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['cases']} | {r['datasets']} | {r['raw_files']} | {r['jobs']} | {r['profile']} | "
              f"{r['median_s']:.2f} | {r['min_s']:.2f} |")
    if len(rows) > 1:
        small, large = rows[0], max(rows, key=lambda r: r["raw_files"])
        if large["raw_files"] > small["raw_files"]:
            per_k = (large["median_s"] - small["median_s"]) / (large["raw_files"] - small["raw_files"]) * 1000
            print(f"\n~{per_k:.2f} s per 1000 raw files; 7.4M files (SA-Med2D-20M images + labels) "
                  f"-> ~{per_k * 7400:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
