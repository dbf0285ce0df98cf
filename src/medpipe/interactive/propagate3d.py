"""Interactive 3D evaluation by prompt propagation (docs/fidelity.md, "Interactive 3D evaluation").

An object is prompted on its start slice (middle of its z-extent) with a box or with points (one
random positive inside, one negative at least 10 px away). Of the start slice's prediction only
the connected component holding its first pixel is kept, as in the reference. That mask is then
propagated slice by slice down and up: each next slice is prompted from the previous slice's
predicted mask through a *projection mode*, and a direction stops when the IoU between the
previous and the new mask falls below ``iou_threshold`` (the new mask is discarded) or the volume
ends.

The prompts reproduce micro-sam's ``segment_from_mask`` (``prompt_based_segmentation.py``):

- ``box``: the mask's bbox, each side grown by ``box_extension`` x its side length (a fixed number
  of pixels when >= 1), clipped to the image, then rounded;
- ``points``: in the mask cropped to that box, the Euclidean distance to the object's outer
  boundary, Gaussian-smoothed (sigma 1); positives at its local maxima inside the object (min
  distance 3 px), negatives at those outside it (min distance 5 px);
- ``single_point``: one positive at the maximum of that smoothed distance inside the object (it
  depends on the box extension, which decides the crop);
- ``mask``: the box plus the mask itself as low-res logits;
- ``points_and_mask``: the points plus the mask logits.

``micro_sam_rules`` picks the micro-sam version where they differ: ``paper`` (<= 1.7, which made the
published numbers: ``skimage.filters.gaussian``, logit-resized mask prompts, 8-connected start
component) or ``v1.8`` (``scipy``'s equivalent of bioimage-cpp's Gaussian, binary-resized mask
prompts, 4-connected start component).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.filters import gaussian
from skimage.segmentation import find_boundaries

from medpipe import prompts
from medpipe.interactive.objects import first_component, point_start_prompt
from medpipe.interactive.predictor import MICRO_SAM_RULES

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
    """The tight bbox (x0, y0, x1, y1, upper exclusive) grown by ``box_extension`` x side length per side.

    As micro-sam ``_process_box``: the growth is a float, the box is clipped to the image and then
    rounded (half to even); values >= 1 are a fixed pixel margin.
    """
    x0, y0, x1, y1 = (int(v) for v in prompts.tight_bbox(mask))
    if box_extension == 0:
        ey = ex = 0.0
    elif box_extension >= 1:
        ey = ex = float(box_extension)
    else:
        ey, ex = box_extension * (y1 - y0), box_extension * (x1 - x0)
    h, w = mask.shape
    box = np.array([max(x0 - ex, 0), max(y0 - ey, 0), min(x1 + ex, w), min(y1 + ey, h)])
    return np.round(box).astype(np.int64)


def smoothed_distance(crop: np.ndarray, rules: str) -> np.ndarray:
    """Distance to the object's outer boundary in a crop, Gaussian-smoothed (sigma 1) per ``rules``."""
    off_boundary = ~find_boundaries(crop, mode="outer")
    if rules == "paper":
        return gaussian(ndimage.distance_transform_edt(off_boundary), sigma=1.0)
    return distance_v18(off_boundary)


def distance_v18(off_boundary: np.ndarray) -> np.ndarray:
    """micro-sam 1.8's float32 distance transform and Gaussian (bioimage-cpp), by scipy's equivalents.

    The two agree to ~1e-7; where a mask's smoothed distance has exact ties (noisy masks have
    hundreds of maxima), that can still move a peak by a pixel. The cross-check tests swap in
    bioimage-cpp itself to compare the rest of the rule exactly.
    """
    distances = ndimage.distance_transform_edt(off_boundary).astype(np.float32)
    return ndimage.gaussian_filter(distances, sigma=1.0, mode="mirror", truncate=3.0)


def mask_points(mask: np.ndarray, box_extension: float, rules: str = "paper",
                single: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``points`` (or with ``single`` the ``single_point``) projection: ``(coords (K, 2) (x, y), labels)``.

    Positives are the inner maxima of the smoothed distance in the extended box, negatives the
    outer ones, in ``peak_local_max``'s order; a mask without an inner maximum gets no positive.
    """
    if rules not in MICRO_SAM_RULES:
        raise ValueError(f"unknown micro_sam_rules {rules!r}; expected one of {MICRO_SAM_RULES}")
    mask = np.asarray(mask, dtype=bool)
    x0, y0, x1, y1 = extended_box(mask, box_extension)
    crop = mask[y0:y1, x0:x1]
    distances = smoothed_distance(crop, rules)
    inner = np.where(crop, distances, 0.0)
    offset = np.array([y0, x0])
    if single:
        centre = np.array(np.unravel_index(int(np.argmax(inner)), inner.shape)) + offset
        return centre[::-1][None].astype(np.int64), np.ones(1, dtype=np.int64)
    outer = np.where(crop, 0.0, distances)
    positives = peak_local_max(inner, min_distance=3, exclude_border=False)
    negatives = peak_local_max(outer, min_distance=5, exclude_border=False)
    rc = np.concatenate([positives, negatives]).reshape(-1, 2) + offset
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))]).astype(np.int64)
    return rc[:, ::-1].astype(np.int64), labels


def projection_prompts(mask: np.ndarray, projection: str, box_extension: float, rules: str = "paper") -> dict:
    """Prompts for the next slice derived from ``mask`` (2D bool) by a projection mode.

    Returns ``{points (K, 2) | None, labels (K,) | None, box (4,) | None, use_mask}``; the caller
    turns ``use_mask`` into low-res logits of ``mask`` (that needs the model's mask-input size).
    An empty mask gives neither box nor points (only the mask prompt, where the mode has one).
    """
    if projection not in PROJECTION_PARTS:
        raise ValueError(f"unknown projection {projection!r}; expected one of {PROJECTIONS}")
    mask = np.asarray(mask, dtype=bool)
    use_box, use_mask, use_points = PROJECTION_PARTS[projection]
    points = labels = box = None
    if mask.any():
        if use_points:
            points, labels = mask_points(mask, box_extension, rules, single=projection == "single_point")
        if use_box:
            box = extended_box(mask, box_extension)
    return {"points": points, "labels": labels, "box": box, "use_mask": use_mask}


def first_slice_prompts(mask2d: np.ndarray, start: str, rng: np.random.Generator) -> dict:
    """The first prompt on the start slice: tight box, or one random positive + one distant negative."""
    if start == "box":
        return {"points": None, "labels": None, "box": prompts.tight_bbox(mask2d), "use_mask": False}
    if start == "point":
        points, labels = point_start_prompt(mask2d, rng)
        return {"points": points, "labels": labels, "box": None, "use_mask": False}
    raise ValueError(f"unknown 3D start {start!r}; expected 'box' or 'point'")


def start_mask(predictor, embedding, original_size, prompt: dict, rules: str = "paper") -> np.ndarray:
    """The start slice's prediction, reduced to the component holding its first pixel (the reference)."""
    mask = predict_slice(predictor, embedding, original_size, prompt)
    return first_component(mask, connectivity=2 if rules == "paper" else 1)


def predict_slice(predictor, embedding, original_size, prompt: dict, prev_mask=None,
                  rules: str = "paper") -> np.ndarray:
    """One decoder call for one object on one slice (single-mask head); returns the binary mask (H, W)."""
    points = None if prompt["points"] is None else prompt["points"][None]
    labels = None if prompt["labels"] is None else prompt["labels"][None]
    boxes = None if prompt["box"] is None else prompt["box"][None]
    mask_input = predictor.mask_logits_from_binary(prev_mask[None], rules) if prompt["use_mask"] else None
    return predictor.predict(embedding, original_size, points, labels, boxes, mask_input=mask_input).masks[0]


def overlap_iou(previous: np.ndarray, current: np.ndarray) -> float:
    """IoU as micro-sam's ``compute_iou`` (intersection / (union + 1e-7)): 0 when both are empty."""
    union = int(np.logical_or(previous, current).sum())
    return float(np.logical_and(previous, current).sum()) / (float(union) + 1e-7)


def propagation_steps(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int, step: int,
                      projection: str, box_extension: float, stop_below: float, rules: str = "paper"):
    """Yield ``(z, mask, iou_with_previous)`` slice by slice in one direction (``step`` = -1 or +1).

    The slice whose IoU falls below ``stop_below`` is yielded too (the caller discards it) and
    ends the walk, as does the volume's end (micro-sam ``segment_mask_in_volume``). After an empty
    mask the IoU is 0 whatever SAM predicts, so with ``stop_below`` > 0 the empty slice is yielded
    without a decoder call. The prompts never depend on the threshold, so a walk at the lowest
    threshold of a grid contains the walk of every higher threshold as a prefix.
    """
    prev, z = np.asarray(first_mask, dtype=bool), z_start + step
    while 0 <= z < len(embeddings):
        if not prev.any() and stop_below > 0:
            yield z, np.zeros_like(prev), 0.0
            return
        prompt = projection_prompts(prev, projection, box_extension, rules)
        current = predict_slice(predictor, embeddings[z], original_size, prompt, prev, rules)
        overlap = overlap_iou(prev, current)
        yield z, current, overlap
        if overlap < stop_below:
            return
        prev, z = current, z + step


def propagate(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int, grid: GridPoint,
              rules: str = "paper"):
    """Propagate ``first_mask`` (the start slice's mask) through the volume; returns (Z, H, W) bool.

    ``embeddings`` is indexable by slice (S, C, h, w). Each direction stops at the volume's end or
    when IoU(previous, new) < ``grid.iou_threshold`` (the new mask is then discarded, as in the
    reference code). This is one grid point alone, the way the reference code runs it;
    ``score_grid`` gives the same result for a whole grid at once.
    """
    out = np.zeros((len(embeddings), *original_size), dtype=bool)
    out[z_start] = first_mask
    for step in (-1, 1):
        for z, mask, overlap in propagation_steps(predictor, embeddings, original_size, first_mask, z_start, step,
                                                  grid.projection, grid.box_extension, grid.iou_threshold, rules):
            if overlap < grid.iou_threshold:
                break
            out[z] = mask
    return out


def propagation_key(point: GridPoint) -> tuple[str, float]:
    """Grid points with equal keys prompt every slice identically; they differ only in where they stop.

    The IoU threshold only decides where a walk stops, so the 275-point paper grid needs 55 distinct
    walks (5 modes x 11 extensions; ``single_point`` depends on the extension too, through its crop).
    """
    return point.projection, point.box_extension


def score_grid(predictor, embeddings, original_size, first_mask: np.ndarray, z_start: int,
               points: list[GridPoint], target: np.ndarray, rules: str = "paper") -> list[tuple[float, int]]:
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
                                                       step, projection, box_extension, lowest, rules)]
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
