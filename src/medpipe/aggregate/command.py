"""Command lines of the aggregation stage: ``medpipe aggregate-interactive`` and ``semantic-aggregate``."""

from __future__ import annotations

import argparse
import logging

from medpipe.config import datasets_with_role, load_config

log = logging.getLogger(__name__)


def add_aggregate_interactive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="validated config snapshot (YAML)")
    parser.add_argument("--tables2d", nargs="*", default=[], help="eval2d union tables (per image and class)")
    parser.add_argument("--objects2d", nargs="*", default=[], help="eval2d per-object tables")
    parser.add_argument("--tables3d", nargs="*", default=[], help="eval3d test.tsv and oracle.tsv tables")
    parser.add_argument("--tables", required=True, help="output folder for tables")
    parser.add_argument("--figures", required=True, help="output folder for figures")


def run_aggregate_interactive(args) -> int:
    from medpipe.aggregate.interactive import aggregate

    paths = aggregate(load_config(args.config), args.tables2d, args.objects2d, args.tables3d, args.tables,
                      args.figures)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


def add_semantic_aggregate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tables", nargs="+", help="per-job result tables of medpipe semantic-run")
    parser.add_argument("--config", required=True, help="resolved study config (dataset roles, reference methods)")
    parser.add_argument("--tables-dir", required=True)
    parser.add_argument("--figures-dir", required=True)


def run_semantic_aggregate(args) -> int:
    from medpipe.aggregate.semantic import aggregate

    config = load_config(args.config)
    aggregate(args.tables, datasets_with_role(config, "semantic2d"), datasets_with_role(config, "semantic3d"),
              args.tables_dir, args.figures_dir, config["semantic"]["aggregate"]["reference_methods"])
    return 0
