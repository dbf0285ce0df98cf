"""Small generated zarr stores and a corpus table for the finetuning tests (docs/data-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpipe.store import StoreWriter


def _blobs(rng, shape, classes, count):
    label = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    for _ in range(count):
        cy, cx = rng.integers(8, shape[-2] - 8), rng.integers(8, shape[-1] - 8)
        r = rng.integers(4, 9)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, classes + 1)
    return label


def write_store(path: Path, name: str, ndim: int, cases: dict[str, tuple[np.ndarray, np.ndarray]], classes: dict):
    with StoreWriter(path, name, "ct" if ndim == 3 else "xray", ndim, classes) as writer:
        for case_id, (image, label) in cases.items():
            writer.write_case(case_id, image, label, patient_id=case_id.split("_")[0], modality="x",
                              spacing=[1.0] * ndim)
        return writer.publish()


def make_corpus(tmp: Path, seed: int = 0, size: int = 64) -> tuple[Path, list[Path]]:
    """Two stores (2D with 6 cases, one empty; 3D with 2 volumes) and corpus.tsv (train/val, in_full)."""
    rng = np.random.default_rng(seed)
    cases2d = {}
    for i in range(6):
        label = _blobs(rng, (size, size), 2, 3) if i != 5 else np.zeros((size, size), np.uint8)
        image = (rng.normal(100, 20, (size, size)) + 80 * (label > 0)).astype(np.uint16)
        cases2d[f"p{i}_img"] = (image, label)
    cases3d = {}
    for i in range(2):
        label = np.stack([_blobs(rng, (size, size), 2, 2) if z % 2 == 0 else np.zeros((size, size), np.uint8)
                          for z in range(4)])
        image = (rng.normal(0, 30, label.shape) + 200 * (label > 0)).astype(np.int16)
        cases3d[f"v{i}_vol"] = (image, label)
    s2 = write_store(tmp / "d2.zarr", "d2", 2, cases2d, {1: "a", 2: "b"})
    s3 = write_store(tmp / "d3.zarr", "d3", 3, cases3d, {1: "a", 2: "b"})
    rows = ["dataset\tcase_id\tpatient_id\tmodality\tsplit\tin_full\tin_p60"]
    for i, case in enumerate(sorted(cases2d)):
        split = "val" if i == 4 else "train"
        rows.append(f"d2\t{case}\t{case.split('_')[0]}\txray\t{split}\ttrue\t{'true' if i < 3 or i == 4 else 'false'}")
    for case in sorted(cases3d):
        rows.append(f"d3\t{case}\t{case.split('_')[0]}\tct\ttrain\ttrue\tfalse")
    table = tmp / "corpus.tsv"
    table.write_text("\n".join(rows) + "\n")
    return table, [s2, s3]


def tiny_settings(**overrides) -> dict:
    from medpipe.run_settings import KNOB_DEFAULTS

    settings = {**KNOB_DEFAULTS, "run": "t", "preset": "medicosam_full", "base": "sam_tiny", "model_type": "tiny",
                "checkpoint": None, "n_obj": 3, "n_steps": 2, "p_box": 0.5, "p_mask": 0.5, "e_sem": False,
                "lr": 1e-4, "iterations": 4, "batch_size": 2, "patch_size": 64, "num_workers": 0,
                "val_every": 2, "val_batches": 2, "checkpoint_every": 2, "lr_decay_every": 2}
    settings.update(overrides)
    return settings


def write_config(tmp: Path, runs: dict, gpus: int = 0) -> Path:
    """A valid study config whose finetune runs are ``runs`` (the datasets entry is a placeholder)."""
    import yaml

    config = {
        "seed": 0,
        "results_dir": str(tmp / "results"),
        "datasets": {"d2": {"modality": "xray", "ndim": 2, "images": "x/*.png", "labels": "y/*.png",
                            "classes": {1: "a", 2: "b"}}},
        "models": {"sam_tiny": {"type": "tiny", "checkpoint": None}},
        "finetune": {"gpus": gpus, "runs": runs},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TINY_RUN = {"base": "sam_tiny", "preset": "medicosam_full", "iterations": 4, "batch_size": 2, "n_obj": 3,
            "n_steps": 2, "patch_size": 64, "num_workers": 0, "val_every": 2, "val_batches": 2,
            "checkpoint_every": 2, "lr_decay_every": 2, "lr": 1e-4}
