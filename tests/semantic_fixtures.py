"""Small generated stores and split tables for the semantic segmentation tests (docs/data-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune_fixtures import write_store


def _disc_label(rng, shape, n_classes):
    """Discs of class 1..n_classes on a (.., Y, X) grid; class c has radius growing with c."""
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    label = np.zeros(shape[-2:], dtype=np.uint8)
    for c in range(1, n_classes + 1):
        cy, cx = rng.integers(12, shape[-2] - 12), rng.integers(12, shape[-1] - 12)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= (3 + 2 * c) ** 2] = c
    return label


def make_semantic_data(tmp: Path, seed: int = 0, colour: bool = False) -> dict:
    """2D store (6 cases, 64x64, classes 1-2), 3D store (4 volumes 8x48x48, classes 1-2), split tables.

    Intensity = class id x 60 + noise, so a model can learn the task in a few iterations.
    """
    rng = np.random.default_rng(seed)
    cases2d = {}
    for i in range(6):
        label = _disc_label(rng, (64, 64), 2)
        image = (label * 60.0 + rng.normal(40, 8, label.shape)).clip(0, 255)
        if colour:
            image = np.stack([image, image * 0.8, image * 0.5], -1)
        cases2d[f"p{i}_img"] = (image.astype(np.uint8), label)
    cases3d = {}
    for i in range(4):
        label = np.stack([_disc_label(np.random.default_rng([seed, i]), (48, 48), 2) if 1 <= z <= 6
                          else np.zeros((48, 48), np.uint8) for z in range(8)])
        image = (label * 300.0 + rng.normal(-100, 30, label.shape)).astype(np.int16)
        cases3d[f"v{i}_vol"] = (image, label)
    s2 = write_store(tmp / "sem2d.zarr", "sem2d", 2, cases2d, {1: "small", 2: "large"})
    s3 = write_store(tmp / "sem3d.zarr", "sem3d", 3, cases3d, {1: "small", 2: "large"})
    splits = {}
    for name, cases, parts in (("sem2d", sorted(cases2d), ["train"] * 3 + ["val", "test", "test"]),
                               ("sem3d", sorted(cases3d), ["train", "train", "val", "test"])):
        rows = ["dataset\tcase_id\tpatient_id\tmodality\tsplit"]
        rows += [f"{name}\t{c}\t{c.split('_')[0]}\tx\t{s}" for c, s in zip(cases, parts)]
        splits[name] = tmp / f"{name}.tsv"
        splits[name].write_text("\n".join(rows) + "\n")
    return {"store2d": s2, "store3d": s3, "split2d": splits["sem2d"], "split3d": splits["sem3d"]}


TINY_SEMANTIC = {
    "sam_unetr": {"iterations": 12, "batch_size": 2, "patch_size": 64, "lr": 1e-3, "val_every": 6, "val_batches": 1},
    "ma_sam": {"iterations": 12, "batch_size": 1, "patch_size": [4, 48, 48], "input_size": 64, "halo": 1, "lr": 1e-3,
               "val_every": 6, "val_batches": 1},
    "swin_unetr": {"feature_size": 12, "iterations": 12, "batch_size": 2, "patch_size_2d": [64, 64],
                   "patch_size_3d": [64, 64, 64], "overlap": 0.25, "lr": 1e-3, "val_every": 6, "val_batches": 1},
    "nnunet": {"planner": "ExperimentPlanner", "epochs": 1, "iterations_per_epoch": 3, "val_iterations_per_epoch": 1,
               "use_mirroring": False},
}


def write_semantic_config(tmp: Path, **overrides) -> Path:
    """A valid study config with tiny semantic settings (the datasets entry is a placeholder)."""
    import copy

    import yaml

    semantic = copy.deepcopy(TINY_SEMANTIC)
    semantic.update({"gpus": 0, "seeds": [0]})
    semantic.update(overrides)
    config = {
        "seed": 0,
        "results_dir": str(tmp / "results"),
        "datasets": {"sem2d": {"modality": "xray", "ndim": 2, "images": "x/*.png", "labels": "y/*.png",
                               "classes": {1: "small", 2: "large"}, "roles": ["semantic2d"]}},
        "models": {"sam_tiny": {"type": "tiny", "checkpoint": None}},
        "semantic": semantic,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
