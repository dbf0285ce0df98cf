"""Command lines of the export stage: ``medpipe export``, ``check-compat`` and ``compat-table``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medpipe.models.names import MODEL_TYPES


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("training_ckpt", help="training checkpoint (latest.pt / best.pt of a finetune run)")
    parser.add_argument("out", help="exported model file, e.g. results/models/<run>.pth")


def run_export(args) -> int:
    from medpipe.export.checkpoint import export

    export(args.training_ckpt, args.out)
    return 0


def add_check_compat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="exported model file (.pth, flat SAM state dict)")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    parser.add_argument("--name", help="model name for the table (default: file name without .pth)")
    parser.add_argument("--base", default="", help="base model label (e.g. random-init) recorded in the table")
    parser.add_argument("--out", help="write the result as JSON here (default: print it)")
    parser.add_argument("--no-predict", action="store_true", help="only check strict loading")


def run_check_compat(args) -> int:
    from medpipe.export.compat import check_compat
    from medpipe.files import write_json

    result = check_compat(args.model, args.model_type, predict=not args.no_predict)
    result["model"] = args.name or Path(args.model).name.removesuffix(".pth")
    result["base"] = args.base
    if args.out:
        write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    if not result["compatible"]:
        print(f"{args.model}: not loadable by segment_anything: {result['libraries'][0]['status']}", file=sys.stderr)
        return 1
    return 0


def add_compat_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checks", nargs="+", help="JSON files written by `medpipe check-compat --out`")
    parser.add_argument("--out", required=True, help="compatibility table (TSV)")


def run_compat_table(args) -> int:
    import pandas as pd

    from medpipe.export.checkpoint import ExportError
    from medpipe.export.compat import TABLE_COLUMNS, compat_rows
    from medpipe.files import write_tsv

    results = []
    for path in args.checks:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"{path}: cannot read compatibility check ({exc})") from exc
    frame = pd.DataFrame(compat_rows(results), columns=TABLE_COLUMNS).sort_values(["model", "library"])
    write_tsv(frame, args.out)
    return 0
