"""Hand-built dataset stores and split tables for the interactive-evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medpipe.store import StoreWriter


def write_store(path, name: str, ndim: int, classes: dict[int, str],
                cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A complete store in the layout of docs/data-format.md, written by the library's own writer."""
    with StoreWriter(path, name, "ct", ndim, classes) as writer:
        for case_id, (image, label) in cases.items():
            writer.write_case(case_id, image, label, patient_id=case_id, modality="ct", spacing=[1.0] * ndim)
        return writer.publish()


def write_splits(path, dataset: str, splits: dict[str, str]) -> Path:
    rows = [{"dataset": dataset, "case_id": c, "patient_id": c, "modality": "ct", "split": s}
            for c, s in sorted(splits.items())]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return Path(path)


def disc(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def image_2d(seed: int, size: int = 64):
    """A grey image with two bright discs (class 1) and one square (class 2) plus a 4 px speck."""
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), np.uint8)
    label[disc((size, size), 16, 16, 7)] = 1
    label[disc((size, size), 44, 20, 6)] = 1
    label[30:42, 36:50] = 2
    label[2:4, 60:62] = 1  # 4 px: below the 20 px object filter
    image = (label * 80 + rng.normal(40, 5, label.shape)).clip(0, 255).astype(np.uint8)
    return image, label


def volume_3d(seed: int, shape=(8, 48, 48)):
    """A volume with a ball-like object (class 1) and a box (class 2)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    label = np.zeros(shape, np.uint8)
    label[((z - 4) / 3.0) ** 2 + ((y - 16) / 8.0) ** 2 + ((x - 16) / 8.0) ** 2 <= 1] = 1
    label[2:6, 30:40, 28:42] = 2
    image = (label * 100 + rng.normal(50, 5, shape)).astype(np.int16)
    return image, label
