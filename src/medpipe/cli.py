"""The ``medpipe`` command: one subcommand per pipeline step, each runnable without Snakemake.

Every stage package keeps its argparse code in its ``command.py``; this file only maps each
subcommand to its ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` there. A stage's
module is imported only when its subcommand runs, so ``medpipe --help`` is fast and heavy
dependencies (torch, nnU-Net) load only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Subcommand:
    module: str  # the stage's command module
    add_arguments: str  # name of its function that adds the arguments
    run: str  # name of its function that runs the command and returns the exit status
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "validate-config": Subcommand(
        "medpipe.cli", "add_validate_config_arguments", "run_validate_config",
        "validate a config file against the schema and print it with defaults",
    ),
    "check-data": Subcommand(
        "medpipe.checkdata", "add_check_data_arguments", "run_check_data",
        "for every dataset at once: files its globs match, cases that pair, what ingest would quarantine",
    ),
    "placeholder-tree": Subcommand(
        "medpipe.checkdata", "add_placeholder_tree_arguments", "run_placeholder_tree",
        "empty files matching a study config's globs and a config copy pointing at them (dry-run the study DAG)",
    ),
    "synth": Subcommand(
        "medpipe.synth.command", "add_synth_arguments", "run_synth",
        "generate a demo raw dataset in real file formats",
    ),
    "ingest": Subcommand(
        "medpipe.data.command", "add_ingest_arguments", "run_ingest",
        "ingest one raw dataset into a zarr v3 store",
    ),
    "ingest-plan": Subcommand(
        "medpipe.data.command", "add_ingest_plan_arguments", "run_ingest_plan",
        "plan the ingest of an SA-Med2D corpus in parts (streams its index once)",
    ),
    "ingest-part": Subcommand(
        "medpipe.data.command", "add_ingest_part_arguments", "run_ingest_part",
        "ingest one part of a planned SA-Med2D corpus",
    ),
    "ingest-gather": Subcommand(
        "medpipe.data.command", "add_ingest_gather_arguments", "run_ingest_gather",
        "gather the ingested parts of a corpus into one packed dataset store",
    ),
    "split": Subcommand(
        "medpipe.data.command", "add_split_arguments", "run_split",
        "write the train/val/test split table of one dataset",
    ),
    "split-corpus": Subcommand(
        "medpipe.data.command", "add_split_corpus_arguments", "run_split_corpus",
        "write the split table of the finetuning corpus",
    ),
    "finetune": Subcommand(
        "medpipe.finetune.command", "add_finetune_arguments", "run_finetune",
        "finetune SAM with Alg. 1 (one configured run; resumable; torchrun for DDP)",
    ),
    "export": Subcommand(
        "medpipe.export.command", "add_export_arguments", "run_export",
        "export a training checkpoint as a segment_anything-loadable .pth",
    ),
    "check-compat": Subcommand(
        "medpipe.export.command", "add_check_compat_arguments", "run_check_compat",
        "check that an exported .pth loads strictly in segment_anything and predicts",
    ),
    "compat-table": Subcommand(
        "medpipe.export.command", "add_compat_table_arguments", "run_compat_table",
        "collect compatibility checks into the compatibility table",
    ),
    "embed": Subcommand(
        "medpipe.interactive.command", "add_embed_arguments", "run_embed",
        "encode once every image the interactive evaluation of one dataset uses",
    ),
    "eval2d": Subcommand(
        "medpipe.interactive.command", "add_eval2d_arguments", "run_eval2d",
        "interactive 2D evaluation of one model on one dataset (union Dice per image and class; per-object Dice)",
    ),
    "eval3d": Subcommand(
        "medpipe.interactive.command", "add_eval3d_arguments", "run_eval3d",
        "interactive 3D evaluation: grid search on val, chosen setting and oracle on test",
    ),
    "eval3d-sam2": Subcommand(
        "medpipe.interactive.command", "add_eval3d_sam2_arguments", "run_eval3d_sam2",
        "interactive 3D baseline: SAM2 video propagation on test volumes",
    ),
    "aggregate-interactive": Subcommand(
        "medpipe.aggregate.command", "add_aggregate_interactive_arguments", "run_aggregate_interactive",
        "tables and figures of the interactive evaluation",
    ),
    "semantic-run": Subcommand(
        "medpipe.semantic.command", "add_semantic_run_arguments", "run_semantic_run",
        "train and test one semantic segmentation method on one dataset and seed",
    ),
    "semantic-aggregate": Subcommand(
        "medpipe.aggregate.command", "add_semantic_aggregate_arguments", "run_semantic_aggregate",
        "semantic result tables -> summary, seed statistics, paired tests, figures",
    ),
}


def add_validate_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")


def run_validate_config(args) -> int:
    import json

    import yaml

    from medpipe.config import check_files, load_config

    config = load_config(args.config)
    check_files(config, source=args.config)
    print(yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False))
    return 0


def _wire(parser: argparse.ArgumentParser, command: Subcommand) -> None:
    """Import the command's module and add its arguments and runner to ``parser``."""
    module = importlib.import_module(command.module)
    getattr(module, command.add_arguments)(parser)
    parser.set_defaults(_run=getattr(module, command.run))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; only the subcommand named in ``argv`` (if any) gets its arguments wired."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="medpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen:
            _wire(subparser, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from medpipe.errors import MedpipeError

    try:
        if getattr(args, "device", None) is not None:  # a torch job: refuse a GPU job without CUDA, log the hardware
            from medpipe.hardware import job_header, require_cuda

            if args.device == "cuda":
                require_cuda()
            logging.getLogger("medpipe").info("%s", job_header(args.device))
        return int(args._run(args) or 0)
    except MedpipeError as exc:  # the one error contract (medpipe.errors): the message, no traceback
        print(f"medpipe {args.command}: {exc}" if exc.names_command else exc, file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:  # a missing input is bad input too: one line naming it
        print(f"{exc.filename}: {exc.strerror}" if exc.filename else exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
