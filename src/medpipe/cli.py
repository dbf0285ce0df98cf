"""The ``medpipe`` command: one subcommand per pipeline stage.

Each stage module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them up, so every stage stays runnable (and testable) without Snakemake.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help). Only the module of the subcommand being run is imported,
# so `medpipe --help` is fast and a stage's heavy dependencies (torch, nnU-Net) load only when used.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("medpipe.config", "validate a config file against the schema and print it with defaults"),
    "synth": ("medpipe.synth", "generate a demo raw dataset in real file formats"),
    "ingest": ("medpipe.ingest", "ingest one raw dataset into a zarr v3 store"),
    "split": ("medpipe.splits", "write the train/val/test split table of one dataset"),
    "split-corpus": ("medpipe.splits", "write the split table of the finetuning corpus"),
    "finetune": ("medpipe.finetune.command", "finetune SAM with Alg. 1 (one configured run; resumable; torchrun for DDP)"),
    "export": ("medpipe.export", "export a training checkpoint as a segment_anything-loadable .pth"),
    "check-compat": ("medpipe.export", "check that an exported .pth loads strictly in segment_anything and predicts"),
    "compat-table": ("medpipe.export", "collect compatibility checks into the compatibility table"),
    "embed": ("medpipe.interactive.command", "encode once every image the interactive evaluation of one dataset uses"),
    "eval2d": ("medpipe.interactive.command", "interactive 2D evaluation of one model on one dataset (per-object, per-iteration Dice)"),
    "eval3d": ("medpipe.interactive.command", "interactive 3D evaluation: grid search on val, chosen setting and oracle on test"),
    "eval3d-sam2": ("medpipe.interactive.sam2_baseline", "interactive 3D baseline: SAM2 video propagation on test volumes"),
    "aggregate-interactive": ("medpipe.aggregate.interactive", "tables and figures of the interactive evaluation"),
    "semantic-run": ("medpipe.semantic.command", "train and test one semantic segmentation method on one dataset and seed"),
    "semantic-aggregate": ("medpipe.aggregate.semantic", "semantic result tables -> summary, seed statistics, paired tests, figures"),
}


def _wire(parser: argparse.ArgumentParser, name: str) -> None:
    """Import the stage module of ``name`` and add its arguments and runner to ``parser``."""
    module_name = SUBCOMMANDS[name][0]
    module = importlib.import_module(module_name)
    suffix = name.replace("-", "_")
    (getattr(module, f"add_arguments_{suffix}", None) or module.add_arguments)(parser)
    parser.set_defaults(_run=getattr(module, f"run_{suffix}", None) or module.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; only the subcommand named in ``argv`` (if any) gets its arguments wired."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="medpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        subparser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _wire(subparser, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
