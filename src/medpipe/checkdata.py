"""``medpipe check-data CONFIG``: every dataset's globs against the disk, all at once, before any job.

The study names 34 raw datasets; a dry run stops at the first whose files are missing, and
``validate-config`` checks keys, not files. This command pairs each dataset's image and label files
as ingest will (:func:`medpipe.io.cases.discover_cases`) and prints one row per dataset: files its
`images` and `labels` globs match, the cases that pair, the files or cases ingest would quarantine
(with the first reason), and a status: ``ok``, ``partial`` (some quarantined), ``unpaired`` (files
match but no case pairs: check the id regexes against the first problem) or ``MISSING`` (a glob
matches nothing). An ``sa_med2d`` corpus entry is checked for its index file and the `images/` and
`masks/` folders beside it. The exit status is 1 when any dataset is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medpipe.config import load_config

COLUMNS = ("dataset", "images", "labels", "cases", "quarantined", "status", "first_problem")


def dataset_row(name: str, spec: dict) -> dict:
    """The row of one dataset (see the module docstring)."""
    from medpipe.io.cases import DatasetConfigError, discover_cases, find, label_spec

    if spec.get("layout") == "sa_med2d":  # data.zip (read in place) or the unpacked release
        from medpipe.io.layouts.sa_med2d_release import find_source

        row = {"dataset": name, "images": "-", "labels": "-", "cases": "-", "quarantined": "-"}
        try:
            source = find_source(spec, name)
        except DatasetConfigError as exc:
            return {**row, "status": "MISSING", "first_problem": str(exc)}
        folders = [] if source.kind == "zip" else [Path(source.path) / "images", Path(source.path) / "masks"]
        missing = [str(folder) for folder in folders if not folder.is_dir()]
        return {**row, "status": "MISSING" if missing else "ok",
                "first_problem": f"not found: {', '.join(missing)}" if missing else ""}
    images, labels = find(spec["images"]), find(label_spec(spec)["glob"])
    row = {"dataset": name, "images": len(images), "labels": len(labels), "cases": 0, "quarantined": 0}
    if not images or not labels:
        empty = [f"{key} {pattern!r} matches nothing" for key, pattern, files in
                 (("images", spec["images"], images), ("labels", label_spec(spec)["glob"], labels)) if not files]
        return {**row, "status": "MISSING", "first_problem": "; ".join(empty)}
    try:
        cases, quarantined = discover_cases(name, spec)
    except DatasetConfigError as exc:
        return {**row, "status": "MISSING", "first_problem": str(exc)}
    problem = ""
    if quarantined:
        first = quarantined[0]
        problem = f"{first.case_id or first.image or first.label}: {first.problem}"
    status = "unpaired" if not cases else ("partial" if quarantined else "ok")
    return {**row, "cases": len(cases), "quarantined": len(quarantined), "status": status, "first_problem": problem}


def check_data(config: dict) -> list[dict]:
    return [dataset_row(name, spec) for name, spec in config["datasets"].items()]


def format_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS[:-1]}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS[:-1]) + "  first_problem"]
    for row in rows:
        lines.append("  ".join(str(row[c]).ljust(widths[c]) for c in COLUMNS[:-1]) + "  " + row["first_problem"])
    return "\n".join(lines)


def add_check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (config/study.yaml)")


def run_check_data(args) -> int:
    rows = check_data(load_config(args.config))
    print(format_table(rows))
    missing = [r["dataset"] for r in rows if r["status"] == "MISSING"]
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "partial", "unpaired")}
    print(f"{len(rows)} datasets: {counts['ok']} ok, {counts['partial']} partial (cases ingest quarantines), "
          f"{counts['unpaired']} unpaired, {len(missing)} missing{': ' + ', '.join(missing) if missing else ''}",
          file=sys.stderr)
    return 1 if missing else 0


def add_placeholder_tree_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the study config whose /path/to/data and /path/to/checkpoints to fill")
    parser.add_argument("--root", required=True, help="folder for the placeholder files and the config copy")
    parser.add_argument("--cases", type=int, default=2, help="empty files per glob (default 2)")


def run_placeholder_tree(args) -> int:
    from medpipe.placeholders import placeholder_config

    path, _ = placeholder_config(Path(args.root).resolve(), cases_per_dataset=args.cases, study=Path(args.config))
    print(path)
    return 0
