"""Command line of the semantic stage: ``medpipe semantic-run``."""

from __future__ import annotations

import argparse

from medpipe.semantic import METHODS

NONE = "none"


def add_semantic_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="resolved study config (YAML)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--store", required=True, help="the dataset's zarr store")
    parser.add_argument("--split", required=True, help="the dataset's split table (TSV)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--backbone", default=NONE, help="model name whose SAM encoder is used (SAM methods)")
    parser.add_argument("--model-type", default=None, help="SAM model type of the backbone (vit_b, ..., tiny)")
    parser.add_argument("--checkpoint", default=None, help="flat SAM state dict of the backbone; omit for random init")
    parser.add_argument("--decoder-init", default=NONE, choices=("random", "pretrained", NONE))
    parser.add_argument("--decoder-file", default=None, help="<run>.decoder.pth for --decoder-init pretrained")
    parser.add_argument("--table", required=True, help="output Dice table (TSV)")
    parser.add_argument("--pred-dir", required=True, help="folder for the test predictions and training.json")
    parser.add_argument("--work-dir", default=None, help="nnU-Net's raw/preprocessed/results folders")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")


def run_semantic_run(args) -> int:
    from medpipe.config import load_config
    from medpipe.models.device import pick_device
    from medpipe.semantic.run import Backbone, run_semantic

    config = load_config(args.config)
    backbone = Backbone(args.backbone, args.model_type, args.checkpoint, args.decoder_init, args.decoder_file)
    run_semantic(args.method, args.dataset, args.store, args.split, args.seed, config["semantic"][args.method],
                 backbone, args.table, args.pred_dir, args.work_dir, pick_device(args.device))
    return 0
