"""Interactive 3D evaluation by prompt propagation (SPEC 3.5).

An object is prompted on its start slice (middle of its z-extent) with a box or with points (one
random positive, one negative from a ring around it). The mask is then propagated slice by slice
up and down: each next slice is prompted from the previous slice's predicted mask through a
*projection mode*, and propagation stops when the IoU between the previous and the new mask falls
below ``iou_threshold`` (or the previous mask is empty, or the volume ends).

Projection modes (how the reference code's ``segment_from_mask`` derives prompts from a mask):

- ``single_point``: one positive point at the maximum of the mask's distance transform;
- ``points``: inside the (extended) bbox, positives at the local maxima of the Gaussian-smoothed
  distance transform of the mask (min distance 3 px), negatives at those of the background
  (min distance 5 px);
- ``box``: the bbox of the mask, extended by ``box_extension`` x its side length per side;
- ``mask``: that box plus the mask itself as low-res logits;
- ``points_and_mask``: the points plus the mask logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian

from medpipe import prompts
from medpipe.interactive.objects import ring_point_prompt
from medpipe.metrics import iou

PROJECTIONS = ("single_point", "points", "box", "mask", "points_and_mask")
#: (use_box, use_mask, use_points) of each projection mode
PROJECTION_PARTS = {
    "single_point": (False, False, True),
    "points": (False, False, True),
    "box": (True, False, False),
    "mask": (True, True, False),
    "points_and_mask": (False, True, True),
}


@dataclass(frozen=True)
class GridPoint:
    iou_threshold: float
    projection: str
    box_extension: float

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; expected one of {PROJECTIONS}")

    def as_dict(self) -> dict:
        return {"iou_threshold": self.iou_threshold, "projection": self.projection, "box_extension": self.box_extension}


def extended_box(mask: np.ndarray, box_extension: float) -> np.ndarray:
    """The tight bbox (x0, y0, x1, y1, upper exclusive) grown by round(ext x side length) px per side.

    Values >= 1 are a fixed pixel margin (the reference code's convention); the box is clipped to
    the image.
    """
    x0, y0, x1, y1 = (int(v) for v in prompts.tight_bbox(mask))
    if box_extension == 0:
        ey = ex = 0
    elif box_extension >= 1:
        ey = ex = int(box_extension)
    else:
        ey, ex = int(np.round(box_extension * (y1 - y0))), int(np.round(box_extension * (x1 - x0)))
    h, w = mask.shape
    return np.array([max(x0 - ex, 0), max(y0 - ey, 0), min(x1 + ex, w), min(y1 + ey, h)], dtype=np.int64)


def mask_points(mask: np.ndarray, box_extension: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``points`` projection: inner / outer maxima of the smoothed distance transforms in the box."""
    mask = np.asarray(mask, dtype=bool)
    x0, y0, x1, y1 = extended_box(mask, box_extension)
    crop = mask[y0:y1, x0:x1]
    inner = peak_local_max(gaussian(ndimage.distance_transform_edt(crop)), min_distance=3, exclude_border=False)
    outer = peak_local_max(gaussian(ndimage.distance_transform_edt(~crop)), min_distance=5, exclude_border=False)
    rc = np.concatenate([inner, outer]).reshape(-1, 2) + np.array([y0, x0])
    if len(inner) == 0:  # a 1-px-wide object: its smoothed transform can have no strict maximum
        rc = np.concatenate([prompts.center_point(mask)[::-1][None], rc])
        inner = np.zeros((1, 2))
    labels = np.concatenate([np.ones(len(inner)), np.zeros(len(outer))]).astype(np.int64)
    return rc[:, ::-1].astype(np.int64), labels


def projection_prompts(mask: np.ndarray, projection: str, box_extension: float) -> dict:
    """Prompts for the next slice derived from ``mask`` (2D bool) by a projection mode.

    Returns ``{points (K, 2) | None, labels (K,) | None, box (4,) | None, use_mask}``; the caller
    turns ``use_mask`` into low-res logits of ``mask`` (that needs the model's mask-input size).
    """
    if projection not in PROJECTION_PARTS:
        raise ValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
    mask = np.asarray(mask, dtype=bool)
    use_box, use_mask, use_points = PROJECTION_PARTS[projection]
    points = labels = None
    if use_points and projection == "single_point":
        points, labels = prompts.center_point(mask)[None], np.ones(1, dtype=np.int64)
    elif use_points:
        points, labels = mask_points(mask, box_extension)
    box = extended_box(mask, box_extension) if use_box else None
    return {"points": points, "labels": labels, "box": box, "use_mask": use_mask}


def first_slice_prompts(mask2d: np.ndarray, start: str, rng: np.random.Generator) -> dict:
    """The first prompt on the start slice: tight box, or one random positive + one ring negative."""
    if start == "box":
        return {"points": None, "labels": None, "box": prompts.tight_bbox(mask2d), "use_mask": False}
    if start == "point":
        points, labels = ring_point_prompt(mask2d, rng)
        return {"points": points, "labels": labels, "box": None, "use_mask": False}
    raise ValueError(f"unknown 3D start {start!r}; expected 'box' or 'point'")


def predict_slice(predictor, embedding, original_size, prompt: dict, prev_mask=None) -> np.ndarray:
    """One decoder call for one object on one slice; returns the binary mask (H, W)."""
    points = None if prompt["points"] is None else prompt["points"][None]
    labels = None if prompt["labels"] is None else prompt["labels"][None]
    boxes = None if prompt["box"] is None else prompt["box"][None]
    mask_input = predictor.mask_logits_from_binary(prev_mask[None]) if prompt["use_mask"] else None
    return predictor.predict(embedding, original_size, points, labels, boxes, mask_input=mask_input).masks[0]


def propagation_steps(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int, step: int,
                      projection: str, box_extension: float, stop_below: float):
    """Yield ``(z, mask, iou_with_previous)`` slice by slice in one direction (``step`` = -1 or +1).

    The slice whose IoU falls below ``stop_below`` is yielded too (the caller discards it) and
    ends the walk, as do the volume's end and an empty previous mask. The prompts never depend
    on the threshold, so a walk at the lowest threshold of a grid contains the walk of every
    higher threshold as a prefix.
    """
    prev, z = first_mask, z_start + step
    while 0 <= z < len(embeddings) and prev.any():
        prompt = projection_prompts(prev, projection, box_extension)
        current = predict_slice(predictor, embeddings[z], original_size, prompt, prev)
        overlap = iou(prev, current)
        yield z, current, overlap
        if overlap < stop_below:
            return
        prev, z = current, z + step


def propagate(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int, grid: GridPoint):
    """Propagate ``first_mask`` (the start slice's prediction) through the volume; returns (Z, H, W) bool.

    ``embeddings`` is indexable by slice (S, C, h, w). Each direction stops at the volume's end,
    when the previous mask is empty, or when IoU(previous, new) < ``grid.iou_threshold`` (the new
    mask is then discarded, as in the reference code). This is one grid point alone, the way the
    reference code runs it; ``score_grid`` gives the same result for a whole grid at once.
    """
    out = np.zeros((len(embeddings), *original_size), dtype=bool)
    out[z_start] = first_mask
    for step in (-1, 1):
        for z, mask, overlap in propagation_steps(predictor, embeddings, original_size, first_mask, z_start, step,
                                                  grid.projection, grid.box_extension, grid.iou_threshold):
            if overlap < grid.iou_threshold:
                break
            out[z] = mask
    return out


def propagation_key(point: GridPoint) -> tuple[str, float | None]:
    """Grid points with equal keys prompt every slice identically; they differ only in where they stop.

    The IoU threshold only decides where a walk stops, and ``single_point`` ignores the box
    extension, so the 275-point paper grid needs 45 distinct walks (4 modes x 11 extensions + 1).
    """
    return point.projection, (None if point.projection == "single_point" else point.box_extension)


def score_grid(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int,
               points: list[GridPoint], target: np.ndarray) -> list[tuple[float, int]]:
    """``(dice, n_slices)`` against ``target`` (Z, H, W) for every grid point, equal to ``propagate`` per point.

    Each distinct walk (``propagation_key``) runs once at its group's lowest threshold; a higher
    threshold's result is a prefix of it. Only per-slice overlap counts are kept, never a volume
    per grid point, so memory does not grow with the grid.
    """
    target = np.asarray(target, dtype=bool)
    target_area = int(target.sum())
    first_inter, first_area = int((first_mask & target[z_start]).sum()), int(first_mask.sum())
    groups: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        groups.setdefault(propagation_key(point), []).append(i)
    results: list[tuple[float, int] | None] = [None] * len(points)
    for (projection, box_extension), members in groups.items():
        lowest = min(points[i].iou_threshold for i in members)
        walks = [
            [(overlap, int((mask & target[z]).sum()), int(mask.sum()))
             for z, mask, overlap in propagation_steps(predictor, embeddings, original_size, first_mask, z_start,
                                                       step, projection, box_extension or 0.0, lowest)]
            for step in (-1, 1)
        ]
        for i in members:
            inter, area, n_slices = first_inter, first_area, int(first_area > 0)
            for walk in walks:
                for overlap, slice_inter, slice_area in walk:
                    if overlap < points[i].iou_threshold:
                        break
                    inter, area, n_slices = inter + slice_inter, area + slice_area, n_slices + int(slice_area > 0)
            denominator = area + target_area
            results[i] = (2.0 * inter / denominator if denominator else 1.0, n_slices)
    return results
