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


def noc(dices, threshold: float, cap: int | None = None) -> int:
    """Number of interactions needed to reach ``threshold`` Dice (NoC@85 / NoC@90).

    ``dices`` are one object's Dice after each interaction in order: the initial prompt (point or
    box) is interaction 1, each correction round (one positive + one negative point) one more.
    An object that never reaches the threshold counts as ``cap`` (default: the number of
    interactions that were available), as in the interactive-segmentation literature, so that a
    model is never rewarded for failing.
    """
    dices = np.asarray(dices, dtype=float)
    if dices.ndim != 1 or dices.size == 0:
        raise ValueError(f"noc: expected a non-empty 1D sequence of Dice values, got shape {dices.shape}")
    cap = int(dices.size if cap is None else cap)
    reached = np.flatnonzero(dices >= threshold)
    return int(min(reached[0] + 1, cap)) if reached.size else cap


def bootstrap_ci(values, statistic=np.mean, n_boot: int = 1000, alpha: float = 0.05, rng=None) -> tuple[float, float, float]:
    """Statistic of ``values`` with its percentile-bootstrap ``1 - alpha`` confidence interval.

    Resamples the units in ``values`` (e.g. per-case means, so the interval reflects the
    case-to-case variation) with replacement ``n_boot`` times. Returns ``(estimate, low, high)``;
    a single value gives a zero-width interval. ``rng`` is a ``numpy.random.Generator`` (seed it).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"bootstrap_ci: expected a non-empty 1D sequence, got shape {values.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(0) if rng is None else rng
    estimate = float(statistic(values))
    index = rng.integers(0, values.size, size=(n_boot, values.size))
    stats = np.array([statistic(values[row]) for row in index])
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return estimate, float(low), float(high)
