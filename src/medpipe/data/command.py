"""Command lines of the data stage: ``medpipe ingest``, ``split`` and ``split-corpus``."""

from __future__ import annotations

import argparse
import logging

from medpipe.config import ConfigError, load_config

log = logging.getLogger(__name__)


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--dataset", required=True, help="name of the dataset entry in the config")
    parser.add_argument("--out", required=True, help="dataset store to write (<name>.zarr)")
    parser.add_argument("--quarantine", required=True, help="TSV of refused cases to write")


def run_ingest(args) -> int:
    from medpipe.data.ingest import ingest_dataset
    from medpipe.io.cases import DatasetConfigError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.dataset not in config["datasets"]:
        log.error("%s: no dataset %r (known: %s)", args.config, args.dataset, ", ".join(config["datasets"]))
        return 2
    try:
        ingest_dataset(args.dataset, config["datasets"][args.dataset], args.out, args.quarantine,
                       config.get("ingest"))
    except DatasetConfigError as exc:
        log.error("%s: %s", args.config, exc)
        return 2
    return 0


def _add_split_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="validated config (YAML)")
    parser.add_argument("--out", required=True, help="split table to write (TSV)")
    parser.add_argument("--previous", help="earlier split table whose assignments are kept")
    parser.add_argument("--ledger",
                        help="file recording every assignment made so far (read, then updated); default: none")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (zarr)")
    _add_split_common(parser)


def run_split(args) -> int:
    from medpipe.splits import split_dataset

    config = load_config(args.config)
    split_dataset(args.store, args.out, config["splits"]["fractions"], config["seed"], args.previous, args.ledger)
    return 0


def add_split_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", help="stores of the datasets with role finetune")
    parser.add_argument("--dataset-splits", nargs="*", default=[],
                        help="per-dataset split tables (test cases are held out)")
    _add_split_common(parser)


def run_split_corpus(args) -> int:
    from medpipe.splits import split_corpus

    config = load_config(args.config)
    split_corpus(args.stores, args.dataset_splits, args.out, config["corpus"], config["seed"], args.previous,
                 args.ledger)
    return 0
