"""Segmentation metrics shared by every evaluation (interactive and semantic).

Conventions are fixed here once: an empty prediction of an empty target scores Dice 1.
"""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two binary masks of the same shape."""
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs target {target.shape}")
    denominator = int(prediction.sum()) + int(target.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, target).sum()) / denominator


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1 when both are empty."""
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    union = int(np.logical_or(prediction, target).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, target).sum()) / union


def dice_per_class(prediction: np.ndarray, target: np.ndarray, class_ids) -> dict[int, float]:
    """Dice for each class id of a semantic label map (NaN where the class is absent from both)."""
    if prediction.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs target {target.shape}")
    scores = {}
    for class_id in class_ids:
        p, t = prediction == class_id, target == class_id
        scores[int(class_id)] = float("nan") if not (p.any() or t.any()) else dice(p, t)
    return scores
