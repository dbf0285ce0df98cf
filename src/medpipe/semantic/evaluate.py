"""Dice per class on the test split, tidy result tables and predictions for inspection.

Predictions are paired with ground truth by case id (never by list position). 3D predictions are
written as NIfTI with the case's spacing (open them in 3D Slicer or napari), 2D ones as PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medpipe.files import atomic_path, write_tsv
from medpipe.metrics import dice_per_class

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["method", "backbone", "decoder_init", "dataset", "seed", "case_id", "class_id", "class_name",
                  "dice"]


def dice_rows(case_id: str, prediction: np.ndarray, target: np.ndarray, classes: dict[int, str], **keys) -> list[dict]:
    """One tidy row per class of one case (Dice NaN where the ground truth lacks the class: not scored)."""
    scores = dice_per_class(prediction, target, sorted(classes))
    return [{**keys, "case_id": case_id, "class_id": cid, "class_name": classes[cid], "dice": score}
            for cid, score in scores.items()]


def write_table(rows: list[dict], path) -> pd.DataFrame:
    """Write rows as a TSV with the result columns, atomically."""
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_tsv(frame, path, na_rep="nan")
    return frame


def write_prediction(prediction: np.ndarray, spacing, folder, case_id: str) -> Path:
    """Save a label map: (Z, Y, X) -> ``<case>.nii.gz`` (x, y, z order, spacing in the affine); 2D -> PNG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if prediction.max(initial=0) <= 255 else np.uint16
    if prediction.ndim == 3:
        import nibabel as nib

        path = folder / f"{case_id}.nii.gz"
        affine = np.diag(list(reversed([float(s) for s in spacing])) + [1.0])
        with atomic_path(path) as tmp:
            nib.save(nib.Nifti1Image(prediction.astype(dtype).transpose(2, 1, 0), affine), tmp)
    else:
        import imageio.v3 as iio

        path = folder / f"{case_id}.png"
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, prediction.astype(dtype))
    return path
