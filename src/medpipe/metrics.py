"""Segmentation metrics and how per-object results become dataset numbers (every evaluation uses them).

Conventions are fixed here once: an empty prediction of an empty target scores Dice 1. Every
dataset number is a mean over classes of means over cases of means over the objects (and seeds)
of that case and class, so an image with many small objects does not outweigh one with a single
large object (average per image -> class -> dataset). Confidence intervals resample cases, the
independent units of a dataset.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


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
    """Dice for each class id of a semantic label map; NaN where the ground truth lacks the class.

    An image without ground truth for a class is not scored for it (even when the prediction has
    pixels of that class), as in the reference evaluation (docs/fidelity.md, "Semantic
    segmentation"); means over images skip the NaN.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"shape mismatch: prediction {prediction.shape} vs target {target.shape}")
    scores = {}
    for class_id in class_ids:
        p, t = prediction == class_id, target == class_id
        scores[int(class_id)] = dice(p, t) if t.any() else float("nan")
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


def bootstrap_ci(values, statistic=np.mean, n_boot: int = 1000, alpha: float = 0.05,
                 rng=None) -> tuple[float, float, float]:
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


def hierarchical_mean(frame: pd.DataFrame, value: str = "dice") -> float:
    """Mean over classes of the mean over cases of the per-(case, class) mean of ``value``."""
    if frame.empty:
        raise ValueError("hierarchical_mean: no rows")
    per_case = frame.groupby(["class_id", "case"])[value].mean()
    return float(per_case.groupby(level="class_id").mean().mean())


def bootstrap_dataset_mean(frame: pd.DataFrame, value: str = "dice", n_boot: int = 1000, seed: int = 0):
    """``(mean, low, high)``: the hierarchical mean with a 95% CI from resampling cases."""
    per_case = frame.groupby(["case", "class_id"])[value].mean().reset_index()
    cases = per_case["case"].unique()
    table = per_case.pivot(index="case", columns="class_id", values=value).loc[cases]
    values = table.to_numpy()

    def statistic(index_like):
        rows = values[index_like.astype(int)]
        with warnings.catch_warnings():  # a resample can miss every case of a rare class: that class drops out
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(np.nanmean(rows, axis=0)))

    return bootstrap_ci(np.arange(len(cases)), statistic=statistic, n_boot=n_boot, rng=np.random.default_rng(seed))


def noc_per_object(frame: pd.DataFrame, thresholds=(0.85, 0.90)) -> pd.DataFrame:
    """NoC@t per object, start, masks, seed and model from a 2D per-iteration table.

    Capped at the number of interactions run (initial prompt + corrections): an object that never
    reaches t counts as that cap.
    """
    keys = ["model", "dataset", "case", "class_id", "class", "object", "start", "masks", "seed"]
    rows = []
    for key, group in frame.sort_values("iteration").groupby(keys, sort=False):
        dices = group["dice"].to_numpy()
        rows.append({**dict(zip(keys, key)), **{f"noc{int(round(t * 100))}": noc(dices, t) for t in thresholds},
                     "cap": len(dices)})
    return pd.DataFrame(rows)
