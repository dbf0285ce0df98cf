"""``medpipe semantic-run``: train one method on one dataset with one seed and score the test split.

One invocation = one Snakemake job (method x backbone x decoder init x dataset x seed). It writes
a tidy Dice table (one row per test case and class) and the test predictions (NIfTI for volumes,
PNG for 2D) under ``--pred-dir`` together with ``training.json`` (loss history and settings).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from medpipe.config import load_config
from medpipe.semantic import METHODS
from medpipe.semantic.data import PatchSampler, load_case, read_split
from medpipe.semantic.evaluate import dice_rows, write_prediction, write_table
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)
NONE = "none"


def add_arguments(parser) -> None:
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


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_torch_method(method: str, settings: dict, store: DatasetStore, first_case: str, args, device: str):
    """The model and its patch/predict rules for a torch method (errors name the misfit)."""
    from medpipe.semantic.methods import TorchMethod

    n_classes = max(store.classes) + 1
    if method in ("sam_unetr", "ma_sam"):
        from medpipe.sam import build_sam

        if not args.model_type:
            raise ValueError(f"--method {method} needs --model-type of the backbone")
        sam = build_sam(args.model_type, args.checkpoint)
    if method == "sam_unetr":
        from medpipe.semantic.sam_unetr import build_sam_unetr

        if store.ndim != 2:
            raise ValueError(f"{store.path}: sam_unetr is the 2D method; this dataset is {store.ndim}D (use ma_sam)")
        if args.decoder_init == "pretrained" and not args.decoder_file:
            raise ValueError("--decoder-init pretrained needs --decoder-file")
        decoder_file = args.decoder_file if args.decoder_init == "pretrained" else None
        model = build_sam_unetr(sam, n_classes, decoder_file, settings.get("input_size"))
        patch = (settings["patch_size"],) * 2
        return TorchMethod(method, model, 2, patch, model.input_size, device=device)
    if method == "ma_sam":
        from medpipe.semantic.ma_sam import build_ma_sam

        if store.ndim != 3:
            raise ValueError(f"{store.path}: ma_sam is the 3D method; this dataset is 2D (use sam_unetr)")
        model = build_ma_sam(sam, n_classes, settings["input_size"], settings["freeze_encoder"])
        return TorchMethod(method, model, 3, tuple(settings["patch_size"]), model.input_size,
                           halo=settings["halo"], device=device)
    from medpipe.semantic.swin_unetr import build_swin_unetr, check_patch

    shape = store.image_array(first_case).shape
    in_channels = shape[-1] if store.ndim == 2 and len(shape) == 3 else 1
    patch = check_patch(settings["patch_size_2d"] if store.ndim == 2 else settings["patch_size_3d"])
    model = build_swin_unetr(in_channels, n_classes, store.ndim, settings["feature_size"])
    return TorchMethod(method, model, store.ndim, patch, None, overlap=settings["overlap"], device=device)


def run_torch(method: str, settings: dict, store, split, seed: int, args, device: str):
    """Train on train, select on val, predict test; returns ({case: prediction}, training record)."""
    import torch

    from medpipe.semantic.train import TrainSettings, fit

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tm = build_torch_method(method, settings, store, split["train"][0], args, device)
    train_settings = TrainSettings.from_dict(settings)
    sampler = PatchSampler(store, split["train"], tm.patch, rng)
    val_batches = []
    if split["val"]:  # fixed validation patches (own seed), the same at every validation
        val_sampler = PatchSampler(store, split["val"], tm.patch, np.random.default_rng([seed, 1]))
        val_batches = [tm.to_batch(*val_sampler.batch(train_settings.batch_size))
                       for _ in range(train_settings.val_batches)]
    history = fit(tm.model, lambda: tm.to_batch(*sampler.batch(train_settings.batch_size)), val_batches,
                  train_settings, device)
    predictions = {case: tm.predict(load_case(store, case)[0]) for case in split["test"]}
    n_params = sum(p.numel() for p in tm.model.parameters())
    return predictions, {"history": history, "parameters": n_params}


def run(args) -> int:
    config = load_config(args.config)
    settings = config["semantic"][args.method]
    store = DatasetStore(args.store)
    split = read_split(args.split, args.dataset, store)
    device = resolve_device(args.device)
    log.info("semantic %s on %s (seed %d, backbone %s, decoder %s, device %s)", args.method, args.dataset,
             args.seed, args.backbone, args.decoder_init, device)
    if args.method == "nnunet":
        from medpipe.semantic.nnunet import run_nnunet

        work_dir = args.work_dir or os.path.join(args.pred_dir, "nnunet_work")
        predictions = run_nnunet(store, split, settings, work_dir, args.seed, device)
        record = {}
    else:
        predictions, record = run_torch(args.method, settings, store, split, args.seed, args, device)
    keys = {"method": args.method, "backbone": args.backbone, "decoder_init": args.decoder_init,
            "dataset": args.dataset, "seed": args.seed}
    rows = []
    for case_id in split["test"]:  # paired by case id
        target = store.label(case_id)
        prediction = predictions[case_id]
        if prediction.shape != target.shape:
            raise RuntimeError(f"{args.method}: prediction of {case_id} has shape {prediction.shape}, "
                               f"label {target.shape}")
        rows.extend(dice_rows(case_id, prediction, target, store.classes, **keys))
        write_prediction(prediction, store.info(case_id).spacing, args.pred_dir, case_id)
    frame = write_table(rows, args.table)
    record.update({"settings": settings, **keys, "mean_dice": float(np.nanmean(frame["dice"])) if len(frame) else None})
    record_path = Path(args.pred_dir, "training.json")
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_name(f".training.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, record_path)  # the rule's declared output: written last, atomically
    log.info("%s on %s: mean test Dice %.4f over %d cases", args.method, args.dataset, record["mean_dice"],
             len(split["test"]))
    return 0
