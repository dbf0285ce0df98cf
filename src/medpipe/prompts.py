"""The prompt rules of the study, shared by finetuning (Alg. 1) and interactive evaluation.

Training and evaluation must derive prompts from masks in exactly the same way, otherwise a model
is evaluated on prompts it never saw; so the rules live here, once, and both stages import them.

Conventions (those of ``segment_anything``):
- a mask is a 2D boolean (or 0/1) array indexed ``[row, col]`` = ``[y, x]``;
- a point is ``(x, y)`` in pixel units of the mask's frame (integer pixel indices);
- a box is ``(x0, y0, x1, y1)`` with exclusive upper corner, i.e. the box spans the pixel edges of
  the object (pixels ``x0 .. x1-1``), as in COCO / SA-1B boxes;
- point labels: 1 positive, 0 negative, -1 "no point" (``segment_anything`` ignores it).

Every random rule takes a ``numpy.random.Generator``, so a caller that seeds its generator gets the
same prompts on every run.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

#: grow the object's bbox by this many pixels for the negative-point fallback ring
RING_GROW_PX = 3
#: label of a padding point that ``segment_anything`` ignores
NO_POINT = -1


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def tight_bbox(mask) -> np.ndarray:
    """The tight box ``(x0, y0, x1, y1)`` (upper corner exclusive) around the object's pixels."""
    mask = _as_bool(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("tight_bbox: the mask is empty")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.int64)


def distort_box(box, shape: tuple[int, int], rng: np.random.Generator, factor: float = 0.025) -> np.ndarray:
    """Push each side of ``box`` outward by U(0, factor) x the box's side length (Alg. 1 box noise).

    The left/right sides move by a fraction of the width, top/bottom by a fraction of the height;
    the result is clipped to the image ``shape`` = (H, W). ``factor = 0`` returns the box unchanged.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = x1 - x0, y1 - y0
    u = rng.uniform(0.0, factor, size=4) if factor > 0 else np.zeros(4)
    out = np.array([x0 - u[0] * width, y0 - u[1] * height, x1 + u[2] * width, y1 + u[3] * height])
    out[[0, 2]] = np.clip(out[[0, 2]], 0, shape[1])
    out[[1, 3]] = np.clip(out[[1, 3]], 0, shape[0])
    return out


def sample_point_inside(mask, rng: np.random.Generator) -> np.ndarray:
    """One pixel ``(x, y)`` drawn uniformly from the mask's pixels (the Alg. 1 initial point)."""
    mask = _as_bool(mask)
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        raise ValueError("sample_point_inside: the mask is empty")
    row, col = divmod(int(flat[rng.integers(flat.size)]), mask.shape[1])
    return np.array([col, row], dtype=np.int64)


def center_point(mask) -> np.ndarray:
    """The object's centre ``(x, y)``: its pixel farthest from the object's inner boundary.

    micro-sam's rule for the 2D point start (``util.get_centers_and_bounding_boxes``, mode "v", 1.8;
    docs/fidelity.md): the inner boundary of the object (padded by one pixel, so an object touching
    the image border has a boundary there) and the Euclidean distance to it; the maximum over the
    object's pixels, ties to the first in row-major order.
    """
    mask = _as_bool(mask)
    if not mask.any():
        raise ValueError("center_point: the mask is empty")
    return center_points(mask.astype(np.int64))[1]


def center_points(label) -> dict[int, np.ndarray]:
    """:func:`center_point` of every object of an instance label image ``{id: (x, y)}``.

    The objects share one boundary map, as in the reference, which computes the centres of all
    objects of one class image at once.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"center_points: expected a 2D label image, got shape {label.shape}")
    rows, cols = np.flatnonzero(label.any(axis=1)), np.flatnonzero(label.any(axis=0))
    if rows.size == 0:
        return {}
    # every boundary pixel lies in the objects' bbox; one pixel more keeps the boundaries of the full
    # image (a pixel at the crop's edge is background or the image border), and the exact distance
    # transform of the crop equals the full image's there: the same numbers at a fraction of the cost
    r0, c0 = max(rows[0] - 1, 0), max(cols[0] - 1, 0)
    crop = label[r0: rows[-1] + 2, c0: cols[-1] + 2]
    boundaries = find_boundaries(np.pad(crop, 1), mode="inner")
    distances = ndimage.distance_transform_edt(~boundaries).astype(np.float32)[1:-1, 1:-1]
    centres = {}
    for index, box in enumerate(ndimage.find_objects(crop), start=1):
        if box is None:
            continue
        region = np.where(crop[box] == index, distances[box], -1.0)
        row, col = np.unravel_index(int(np.argmax(region)), region.shape)
        centres[index] = np.array([c0 + col + box[1].start, r0 + row + box[0].start], dtype=np.int64)
    return centres


def _pick(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.flatnonzero(region)
    row, col = divmod(int(flat[rng.integers(flat.size)]), region.shape[1])
    return np.array([col, row], dtype=np.int64)


def bbox_ring(mask, grow: int = RING_GROW_PX) -> np.ndarray:
    """Pixels of the object's tight bbox grown by ``grow`` px on each side, minus the object."""
    mask = _as_bool(mask)
    x0, y0, x1, y1 = tight_bbox(mask)
    ring = np.zeros_like(mask)
    ring[max(y0 - grow, 0) : y1 + grow, max(x0 - grow, 0) : x1 + grow] = True
    return ring & ~mask


def correction_points(gt, pred, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One positive and one negative correction point for a predicted mask (Alg. 1 lines 27-28).

    Positive: uniform from the false negatives ``gt & ~pred``; fallback: the true positives
    (then the prediction already covers the object). Negative: uniform from the false positives
    ``pred & ~gt``; fallbacks: the ring of the bbox grown by 3 px minus the object, then any
    background pixel; if the object fills the whole image there is no negative point and its
    label is -1 (ignored by SAM). Returns ``coords`` (2, 2) as ``(x, y)`` and ``labels`` (2,).
    """
    gt, pred = _as_bool(gt), _as_bool(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"correction_points: gt shape {gt.shape} != prediction shape {pred.shape}")
    if not gt.any():
        raise ValueError("correction_points: the ground-truth mask is empty")
    false_neg = gt & ~pred
    positive = _pick(false_neg if false_neg.any() else gt & pred, rng)
    label = 0
    false_pos = pred & ~gt
    if false_pos.any():
        negative = _pick(false_pos, rng)
    else:
        ring = bbox_ring(gt)
        background = ring if ring.any() else ~gt
        if background.any():
            negative = _pick(background, rng)
        else:
            negative, label = np.zeros(2, dtype=np.int64), NO_POINT
    return np.stack([positive, negative]), np.array([1, label], dtype=np.int64)


def initial_prompts(
    masks, rng: np.random.Generator, use_box: bool, box_distortion: float = 0.0, center: bool = False
) -> dict:
    """Initial prompts for a stack of object masks (N, H, W): boxes or one positive point each.

    ``use_box``: tight bbox, distorted by ``box_distortion`` (Alg. 1 training uses 0.025,
    evaluation 0). Otherwise one point: uniform inside the object (training) or its centre
    (``center=True``, evaluation). Returns a dict with ``boxes`` (N, 4) float or ``None`` and
    ``points`` (N, 1, 2) / ``labels`` (N, 1) int or ``None``, ready for ``as_torch_prompts``.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"initial_prompts: expected masks (N, H, W), got shape {masks.shape}")
    shape = masks.shape[1:]
    if use_box:
        boxes = np.stack([distort_box(tight_bbox(m), shape, rng, box_distortion) for m in masks])
        return {"boxes": boxes, "points": None, "labels": None}
    pick = (lambda m: center_point(m)) if center else (lambda m: sample_point_inside(m, rng))
    points = np.stack([pick(m) for m in masks])[:, None, :]
    return {"boxes": None, "points": points, "labels": np.ones((len(masks), 1), dtype=np.int64)}


def add_correction_points(prompts: dict, gt, pred, rng: np.random.Generator) -> dict:
    """Append one positive and one negative correction point per object; the box stays.

    ``gt`` and ``pred`` are (N, H, W) boolean stacks; objects are processed in order, so the draws
    of a seeded generator are reproducible. Returns a new prompt dict (points accumulate).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    new = [correction_points(g, p, rng) for g, p in zip(gt, pred)]
    coords = np.stack([c for c, _ in new])
    labels = np.stack([lab for _, lab in new])
    if prompts.get("points") is not None:
        coords = np.concatenate([prompts["points"], coords], axis=1)
        labels = np.concatenate([prompts["labels"], labels], axis=1)
    return {"boxes": prompts.get("boxes"), "points": coords, "labels": labels}


def as_torch_prompts(prompts: dict, device) -> tuple:
    """``(points, boxes)`` in the form ``PromptEncoder.forward`` takes: ``((coords, labels) | None, boxes | None)``."""
    points = None
    if prompts.get("points") is not None:
        points = (
            torch.as_tensor(prompts["points"], dtype=torch.float32, device=device),
            torch.as_tensor(prompts["labels"], dtype=torch.int64, device=device),
        )
    boxes = None
    if prompts.get("boxes") is not None:
        boxes = torch.as_tensor(prompts["boxes"], dtype=torch.float32, device=device)
    return points, boxes


def uses_multimask(prompts: dict) -> bool:
    """SAM's 3-mask head is used exactly when the prompt is a single point and nothing else."""
    points = prompts.get("points")
    return prompts.get("boxes") is None and points is not None and points.shape[1] == 1


def select_best(masks: torch.Tensor, iou_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per object, the output with the highest predicted IoU: masks (N, M, H, W) -> (N, 1, H, W).

    Returns the selected masks and the chosen indices (N,). With a single output (M = 1) this is
    the identity.
    """
    best = torch.argmax(iou_pred, dim=1)
    index = best.view(-1, 1, 1, 1).expand(-1, 1, *masks.shape[2:])
    return torch.gather(masks, 1, index), best


def empty_mask_prompt(n: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """An all-zero low-res mask prompt (N, 1, h, w): the first step when mask prompts are on."""
    return torch.zeros((n, 1, *size), dtype=torch.float32, device=device)


def mask_prompt_from(low_res_best: torch.Tensor) -> torch.Tensor:
    """The next step's mask prompt: the previous best low-res logits, detached (no gradient flows
    back through the prompt, as in SAM's training)."""
    return low_res_best.detach().float()


# -- the same rules on the device (training): sync-free, seeded by torch generators ---------------------------
#
# Finetuning draws prompts for every object of a batch in every decoder pass; the numpy rules above
# move each prediction to the host. The functions below draw from the same distributions on the
# tensors' device (no ``nonzero``, no host copy): a uniform pixel of a region is the r-th pixel of
# the region in row-major order with r = floor(u * count), u a float64 uniform from a seeded
# ``torch.Generator``, found by a cumulative sum and ``searchsorted``. Their random stream differs from
# numpy's, so evaluation keeps the numpy rules (its numbers stay byte-identical; docs/fidelity.md).


def device_generators(rngs, device) -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per numpy generator, seeded from it (one draw each)."""
    gens = []
    for rng in rngs:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(rng.integers(2**63 - 1)))
        gens.append(gen)
    return gens


def uniforms(gens: list[torch.Generator], per_image: int, width: int, device) -> torch.Tensor:
    """float64 uniforms (len(gens) * per_image, width): the rows of image b from generator b."""
    return torch.cat([torch.rand((per_image, width), generator=g, device=device, dtype=torch.float64)
                      for g in gens])


def sample_pixels(levels: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform pixel ``(x, y)`` of the first non-empty region per object, and whether there was one.

    ``levels`` (N, L, H, W) boolean regions in order of preference (a region and its fallbacks),
    ``u`` (N,) float64 uniforms in [0, 1). Returns ``coords`` (N, 2) int64 and ``found`` (N,) bool;
    an object whose regions are all empty gets (0, 0) and ``found`` False.
    """
    n, _, height, width = levels.shape
    flat = levels.flatten(2)
    counts = flat.sum(-1)  # (N, L)
    nonempty = counts > 0
    level = torch.argmax(nonempty.to(torch.uint8), dim=1)  # first non-empty (0 when none is)
    region = torch.gather(flat, 1, level.view(n, 1, 1).expand(n, 1, height * width))[:, 0]
    count = torch.gather(counts, 1, level[:, None])[:, 0]
    rank = torch.minimum((u * count).floor().to(torch.int64), (count - 1).clamp_min(0))
    cumulative = torch.cumsum(region, dim=1, dtype=torch.int64)
    index = torch.searchsorted(cumulative, (rank + 1)[:, None]).clamp_max(height * width - 1)[:, 0]
    return torch.stack([index % width, index // width], dim=1), nonempty.any(dim=1)


def tight_bboxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (N, 4) int64 ``(x0, y0, x1, y1)``, upper corner exclusive, of non-empty masks (N, H, W)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)

    def first_last(line):
        size = line.shape[1]
        first = torch.argmax(line.to(torch.uint8), dim=1)
        last = size - torch.argmax(line.flip(1).to(torch.uint8), dim=1)
        return first, last

    (y0, y1), (x0, x1) = first_last(rows), first_last(cols)
    return torch.stack([x0, y0, x1, y1], dim=1)


def bbox_rings(masks: torch.Tensor, grow: int = RING_GROW_PX) -> torch.Tensor:
    """:func:`bbox_ring` of every mask of a stack (N, H, W), on the device."""
    _, height, width = masks.shape
    x0, y0, x1, y1 = tight_bboxes(masks).unbind(1)
    ys = torch.arange(height, device=masks.device)[None, :]
    xs = torch.arange(width, device=masks.device)[None, :]
    inside_y = (ys >= (y0 - grow)[:, None]) & (ys < (y1 + grow)[:, None])
    inside_x = (xs >= (x0 - grow)[:, None]) & (xs < (x1 + grow)[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :] & ~masks


def initial_prompts_device(masks: torch.Tensor, u: torch.Tensor, use_box: bool,
                           box_distortion: float = 0.0) -> dict:
    """:func:`initial_prompts` (training rules) for boolean masks (N, H, W) on the device.

    ``u`` (N, 4) float64 uniforms: a box's four sides move by ``u * box_distortion`` of its side
    length; a point takes ``u[:, 0]``. Returns ``boxes`` (N, 4) float32 or ``points`` (N, 1, 2)
    float32 with ``labels`` (N, 1) int64, the same keys as the numpy version.
    """
    _, height, width = masks.shape
    if use_box:
        x0, y0, x1, y1 = tight_bboxes(masks).to(torch.float64).unbind(1)
        push = u * box_distortion
        box_w, box_h = x1 - x0, y1 - y0
        out = torch.stack([(x0 - push[:, 0] * box_w).clamp(0, width), (y0 - push[:, 1] * box_h).clamp(0, height),
                           (x1 + push[:, 2] * box_w).clamp(0, width), (y1 + push[:, 3] * box_h).clamp(0, height)], 1)
        return {"boxes": out.float(), "points": None, "labels": None}
    coords, _ = sample_pixels(masks[:, None], u[:, 0])
    labels = torch.ones((masks.shape[0], 1), dtype=torch.int64, device=masks.device)
    return {"boxes": None, "points": coords[:, None].float(), "labels": labels}


def correction_points_device(gt: torch.Tensor, pred: torch.Tensor, u: torch.Tensor,
                             rings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`correction_points` for stacks (N, H, W) on the device: ``coords`` (N, 2, 2), ``labels`` (N, 2).

    Positive: uniform from the false negatives, else the true positives; negative: uniform from the
    false positives, else the bbox ring (``rings``, from :func:`bbox_rings`), else the background,
    else no point (label -1 at (0, 0)). ``u`` (N, 2) float64 uniforms.
    """
    gt, pred = gt.bool(), pred.bool()
    rings = bbox_rings(gt) if rings is None else rings
    positive, _ = sample_pixels(torch.stack([gt & ~pred, gt & pred], dim=1), u[:, 0])
    negative, found = sample_pixels(torch.stack([pred & ~gt, rings, ~gt], dim=1), u[:, 1])
    labels = torch.stack([torch.ones_like(found, dtype=torch.int64), torch.where(found, 0, NO_POINT)], dim=1)
    negative = torch.where(found[:, None], negative, 0)
    return torch.stack([positive, negative], dim=1), labels


def add_correction_points_device(prompts: dict, coords: torch.Tensor, labels: torch.Tensor) -> dict:
    """Append device correction points (N, 2, 2) / labels (N, 2) to a device prompt dict."""
    coords = coords.float()
    if prompts.get("points") is not None:
        coords = torch.cat([prompts["points"], coords], dim=1)
        labels = torch.cat([prompts["labels"], labels], dim=1)
    return {"boxes": prompts.get("boxes"), "points": coords, "labels": labels}
