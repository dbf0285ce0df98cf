"""One semantic run: train one method on one dataset with one seed and score the test split.

One run = one Snakemake job (method x backbone x decoder init x dataset x seed). It writes a tidy
Dice table (one row per test case and class) and the test predictions (NIfTI for volumes, PNG for
2D) under ``pred_dir``, then ``training.json`` (loss history and settings) last.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.files import write_json
from medpipe.semantic.data import PatchSampler, WholeImageSampler, load_case, read_split
from medpipe.semantic.evaluate import dice_rows, write_prediction, write_table
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)
NONE = "none"


@dataclass(frozen=True)
class Backbone:
    """The SAM encoder a SAM-based method builds on (``name`` is ``none`` for nnU-Net and Swin UNETR)."""

    name: str = NONE
    model_type: str | None = None
    checkpoint: str | None = None  # flat SAM state dict; None = random init
    decoder_init: str = NONE  # random | pretrained | none
    decoder_file: str | None = None  # <run>.decoder.pth, for decoder_init pretrained


def build_torch_method(method: str, settings: dict, store: DatasetStore, first_case: str, backbone: Backbone,
                       device: str):
    """The model and its patch/predict rules for a torch method (errors name the misfit)."""
    from medpipe.semantic.methods import TorchMethod
    from medpipe.semantic.train import output_activation

    n_classes = max(store.classes) + 1
    activation = output_activation(settings.get("loss", "dice_ce"))
    if method in ("sam_unetr", "ma_sam"):
        from medpipe.models.sam import build_sam

        if not backbone.model_type:
            raise ValueError(f"--method {method} needs --model-type of the backbone")
        from medpipe.models.transforms import pixel_stats

        sam = build_sam(backbone.model_type, backbone.checkpoint)
        pixels = pixel_stats(sam)  # the backbone's own input normalisation (LiteMedSAM: [0, 1] images)
    if method == "sam_unetr":
        from medpipe.models.sam_unetr import build_sam_unetr

        if store.ndim != 2:
            raise ValueError(f"{store.path}: sam_unetr is the 2D method; this dataset is {store.ndim}D (use ma_sam)")
        if backbone.decoder_init == "pretrained" and not backbone.decoder_file:
            raise ValueError("--decoder-init pretrained needs --decoder-file")
        decoder_file = backbone.decoder_file if backbone.decoder_init == "pretrained" else None
        model = build_sam_unetr(sam, n_classes, decoder_file, settings.get("input_size"), activation=activation)
        patch = (settings["patch_size"],) * 2
        return TorchMethod(method, model, 2, patch, model.input_size, device=device,
                           image_prep=settings.get("image_prep", "crop"), activation=activation, pixels=pixels)
    if method == "ma_sam":
        from medpipe.models.ma_sam import build_ma_sam

        if store.ndim != 3:
            raise ValueError(f"{store.path}: ma_sam is the 3D method; this dataset is 2D (use sam_unetr)")
        model = build_ma_sam(sam, n_classes, settings["input_size"], settings["freeze_encoder"], activation)
        return TorchMethod(method, model, 3, tuple(settings["patch_size"]), model.input_size,
                           halo=settings["halo"], device=device, activation=activation, pixels=pixels)
    from medpipe.models.swin_unetr import build_swin_unetr, check_patch

    shape = store.image_array(first_case).shape
    in_channels = shape[-1] if store.ndim == 2 and len(shape) == 3 else 1
    patch = check_patch(settings["patch_size_2d"] if store.ndim == 2 else settings["patch_size_3d"])
    model = build_swin_unetr(in_channels, n_classes, store.ndim, settings["feature_size"])
    return TorchMethod(method, model, store.ndim, patch, None, overlap=settings["overlap"], device=device)


def run_torch(method: str, settings: dict, store, split, seed: int, backbone: Backbone, device: str,
              state_path=None, stop_after: int | None = None):
    """Train on train, select on val, predict test; returns ({case: prediction}, training record).
    ``state_path``: the resumable training state (:func:`medpipe.semantic.train.fit`)."""
    import hashlib
    import json

    import torch

    from medpipe.semantic.train import TrainSettings, fit

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tm = build_torch_method(method, settings, store, split["train"][0], backbone, device)
    train_settings = TrainSettings.from_dict(settings)

    def sampler_for(cases, generator):
        if tm.whole_images:
            return WholeImageSampler(store, cases, generator)
        return PatchSampler(store, cases, tm.patch, generator)

    sampler = sampler_for(split["train"], rng)
    val_batches = []
    if split["val"]:  # fixed validation patches or images (own seed), the same at every validation
        val_sampler = sampler_for(split["val"], np.random.default_rng([seed, 1]))
        val_batches = [tm.to_batch(*val_sampler.batch(train_settings.batch_size))
                       for _ in range(train_settings.val_batches)]
    fingerprint = hashlib.sha256(json.dumps([method, settings, seed, backbone.__dict__], sort_keys=True,
                                            default=str).encode()).hexdigest()[:16]
    history = fit(tm.model, lambda: tm.to_batch(*sampler.batch(train_settings.batch_size)), val_batches,
                  train_settings, device, state_path=state_path, rng=rng, fingerprint=fingerprint,
                  stop_after=stop_after)
    predictions = {case: tm.predict(load_case(store, case)[0]) for case in split["test"]}
    n_params = sum(p.numel() for p in tm.model.parameters())
    return predictions, {"history": history, "parameters": n_params}


def run_semantic(method: str, dataset: str, store_path, split_path, seed: int, settings: dict, backbone: Backbone,
                 table, pred_dir, work_dir=None, device: str = "cpu") -> dict:
    """Train, predict and score one run; writes ``table``, the predictions and ``training.json``."""
    store = DatasetStore(store_path)
    split = read_split(split_path, dataset, store)
    log.info("semantic %s on %s (seed %d, backbone %s, decoder %s, device %s)", method, dataset, seed,
             backbone.name, backbone.decoder_init, device)
    if method == "nnunet":
        from medpipe.semantic.nnunet import run_nnunet

        work_dir = work_dir or os.path.join(pred_dir, "nnunet_work")
        predictions = run_nnunet(store, split, settings, work_dir, seed, device)
        record = {}
    else:
        predictions, record = run_torch(method, settings, store, split, seed, backbone, device,
                                        state_path=Path(pred_dir, "train_state.pt"))
    keys = {"method": method, "backbone": backbone.name, "decoder_init": backbone.decoder_init, "dataset": dataset,
            "seed": seed}
    rows = []
    for case_id in split["test"]:  # paired by case id
        target = store.label(case_id)
        prediction = predictions[case_id]
        if prediction.shape != target.shape:
            raise RuntimeError(f"{method}: prediction of {case_id} has shape {prediction.shape}, label {target.shape}")
        rows.extend(dice_rows(case_id, prediction, target, store.classes, **keys))
        write_prediction(prediction, store.info(case_id).spacing, pred_dir, case_id)
    frame = write_table(rows, table)
    per_class = frame.groupby("class_id")["dice"].mean()  # the reference's order: cases, then classes
    mean_dice = float(per_class.mean()) if per_class.notna().any() else None
    record.update({"settings": settings, **keys, "mean_dice": mean_dice})
    write_json(Path(pred_dir, "training.json"), record)  # the rule's declared output: written last
    log.info("%s on %s: mean test Dice %s over %d cases", method, dataset, record["mean_dice"], len(split["test"]))
    return record
