"""The ``medpipe`` command: one subcommand per pipeline stage.

Each stage module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only
wires them up, so every stage stays runnable (and testable) without Snakemake.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help). Stage modules keep heavy imports (torch, nnU-Net) inside
# their functions, so building this parser stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("medpipe.config", "validate a config file against the schema and print it with defaults"),
    "synth": ("medpipe.synth", "generate a demo raw dataset in real file formats"),
    "ingest": ("medpipe.ingest", "ingest one raw dataset into a zarr v3 store"),
    "split": ("medpipe.splits", "write the train/val/test split table of one dataset"),
    "split-corpus": ("medpipe.splits", "write the split table of the finetuning corpus"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        adder = getattr(module, f"add_arguments_{name.replace('-', '_')}", None) or module.add_arguments
        adder(sp)
        runner = getattr(module, f"run_{name.replace('-', '_')}", None) or module.run
        sp.set_defaults(_run=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
