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
    parser.add_argument("--allow-empty", action="store_true",
                        help="write an empty store when no case can be ingested (default: ingest.allow_empty, "
                             "else that is an error and nothing is written)")


def run_ingest(args) -> int:
    from medpipe.data.faults import IngestFault, machine_fault
    from medpipe.data.ingest import ingest_dataset
    from medpipe.io.cases import DatasetConfigError

    config, spec = _dataset_spec(args)
    allow_empty = args.allow_empty or config["ingest"]["allow_empty"]
    try:
        ingest_dataset(args.dataset, spec, args.out, args.quarantine, config.get("ingest"), allow_empty=allow_empty)
    except DatasetConfigError as exc:
        raise DatasetConfigError(f"{args.config}: {exc}") from exc
    except (OSError, MemoryError) as exc:  # a fault outside any case (the store's folder, the quarantine table)
        if machine_fault(exc) is None:
            raise
        raise IngestFault(f"{getattr(exc, 'filename', None) or args.out}: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}; "
                          f"ingest of {args.dataset} stopped, nothing published") from exc
    return 0


def _add_split_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="validated config (YAML)")
    parser.add_argument("--out", required=True, help="split table to write (TSV)")
    parser.add_argument("--previous", help="earlier split table whose assignments are kept")
    parser.add_argument("--ledger",
                        help="file recording every assignment made so far (read, then grown); default: none")
    parser.add_argument("--max-missing", type=float,
                        help="share of a dataset's ledger cases that may be absent (default: splits.max_missing; "
                             "1 allows any loss)")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="dataset store (zarr)")
    _add_split_common(parser)


def _max_missing(args, config: dict) -> float:
    return config["splits"]["max_missing"] if args.max_missing is None else args.max_missing


def run_split(args) -> int:
    from medpipe.splits import split_dataset

    config = load_config(args.config)
    split_dataset(args.store, args.out, config["splits"]["fractions"], config["seed"], args.previous,
                  args.ledger, _max_missing(args, config))
    return 0


def add_split_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stores", nargs="+", help="stores of the datasets with role finetune")
    parser.add_argument("--dataset-splits", nargs="*", default=[],
                        help="per-dataset split tables (test cases of evaluated datasets are held out)")
    _add_split_common(parser)


def run_split_corpus(args) -> int:
    from medpipe.splits import evaluated_datasets, split_corpus

    config = load_config(args.config)
    split_corpus(args.stores, args.dataset_splits, args.out, config["corpus"], config["seed"], args.previous,
                 args.ledger, _max_missing(args, config), evaluated=evaluated_datasets(config["datasets"]))
    return 0


# ------------------------------------------------------------------ the corpus in parts (SA-Med2D)


def add_ingest_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--dataset", required=True, help="name of a `layout: sa_med2d` dataset entry")
    parser.add_argument("--parts", type=int, required=True, help="number of ingest parts (Snakemake's scatter count)")
    parser.add_argument("--out", required=True, help="plan folder to write")


def _dataset_spec(args):
    config = load_config(args.config)
    if args.dataset not in config["datasets"]:
        raise ConfigError(f"{args.config}: no dataset {args.dataset!r} (known: {', '.join(config['datasets'])})")
    return config, config["datasets"][args.dataset]


def run_ingest_plan(args) -> int:
    from medpipe.data.corpus import plan_corpus

    _, spec = _dataset_spec(args)
    plan_corpus(args.dataset, spec, args.parts, args.out)
    return 0


def add_ingest_part_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--dataset", required=True, help="name of a `layout: sa_med2d` dataset entry")
    parser.add_argument("--plan", required=True, help="plan folder (medpipe ingest-plan)")
    parser.add_argument("--part", required=True, help="which part: K-of-N (Snakemake's scatteritem), K from 1")
    parser.add_argument("--out", required=True, help="part folder to write")


def run_ingest_part(args) -> int:
    from medpipe.data.corpus import ingest_part

    _, spec = _dataset_spec(args)
    k, _, n = args.part.partition("-of-")
    if not (k.isdigit() and n.isdigit()):
        raise ConfigError(f"--part {args.part!r}: expected K-of-N")
    # an IngestFault (the disk or memory, not a case) exits 1: nothing published, no case blamed
    ingest_part(args.dataset, spec, args.plan, int(k) - 1, args.out)
    return 0


def add_ingest_gather_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("parts", nargs="+", help="part folders, in part order")
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--dataset", required=True, help="name of a `layout: sa_med2d` dataset entry")
    parser.add_argument("--out", required=True, help="dataset store to write (<name>.zarr)")
    parser.add_argument("--quarantine", required=True, help="TSV of refused cases to write")
    parser.add_argument("--allow-empty", action="store_true", help="as for `medpipe ingest`")


def run_ingest_gather(args) -> int:
    from medpipe.data.corpus import gather_corpus

    config, spec = _dataset_spec(args)
    gather_corpus(args.dataset, spec, args.parts, args.out, args.quarantine,
                  allow_empty=args.allow_empty or config["ingest"]["allow_empty"])
    return 0
