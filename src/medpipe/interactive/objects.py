"""Which objects the interactive protocols prompt, and where a 3D object starts (SPEC 3.4, 3.5).

An *object* is one connected component of one class of a semantic label map. Components smaller
than ``min_size`` pixels are dropped (the reference evaluation's 20 px filter), because a click
on a speck measures noise, not the model. Objects are numbered per class in the order
``scipy.ndimage.label`` finds them (raster order of their first pixel), so the numbering is a
pure function of the label map and a table row ``(case, class, object)`` always means the same
pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medpipe import prompts

#: components smaller than this (pixels / voxels) are not evaluated (reference: 20)
MIN_OBJECT_PX = 20
#: a 3D object is skipped when its start slice holds fewer pixels than this (reference: 10)
MIN_START_SLICE_PX = 10
#: width of the ring around a 3D object's start-slice mask from which the negative point is drawn
RING_WIDTH_PX = 10


@dataclass(frozen=True)
class Obj:
    """One object: its class id and name, its number within the class, and its boolean mask."""

    class_id: int
    class_name: str
    index: int
    mask: np.ndarray


def connected_objects(label: np.ndarray, classes: dict[int, str], min_size: int = MIN_OBJECT_PX) -> list[Obj]:
    """Connected components of every class in ``label`` (2D or 3D), components < ``min_size`` dropped.

    Connectivity is the face neighbourhood (4 in 2D, 6 in 3D), as ``scipy.ndimage.label``'s
    default; class ids present in the label map but absent from ``classes`` are an error, since
    they would silently vanish from the results otherwise.
    """
    label = np.asarray(label)
    present = {int(v) for v in np.unique(label)} - {0}
    unknown = sorted(present - set(classes))
    if unknown:
        raise ValueError(f"label map has class ids {unknown} that the dataset does not declare ({sorted(classes)})")
    objects = []
    for class_id in sorted(present):
        components, count = ndimage.label(label == class_id)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        index = 0
        for component in range(1, count + 1):
            if sizes[component] < min_size:
                continue
            objects.append(Obj(class_id, classes[class_id], index, components == component))
            index += 1
    return objects



def objects_per_slice(label3d: np.ndarray, classes: dict[int, str],
                      min_size: int = MIN_OBJECT_PX) -> dict[int, list[Obj]]:
    """The 2D objects of each slice of a volume that has any (a 3D dataset "split into separate images")."""
    per_slice = {}
    for z in np.flatnonzero(np.asarray(label3d).reshape(len(label3d), -1).any(axis=1)):
        objects = connected_objects(label3d[z], classes, min_size)
        if objects:
            per_slice[int(z)] = objects
    return per_slice

def start_slice(mask3d: np.ndarray, min_px: int = MIN_START_SLICE_PX) -> int | None:
    """The start slice of a 3D object: the middle of its z-extent, or ``None`` to skip it.

    Middle = ``(z_min + z_max) // 2`` over the slices the object occupies. The object is skipped
    when that slice holds fewer than ``min_px`` of its pixels (a non-convex object can even miss
    its middle slice entirely), because no fair first prompt can be placed there.
    """
    mask3d = np.asarray(mask3d, dtype=bool)
    if mask3d.ndim != 3:
        raise ValueError(f"start_slice: expected a 3D mask, got shape {mask3d.shape}")
    occupied = np.flatnonzero(mask3d.any(axis=(1, 2)))
    if occupied.size == 0:
        raise ValueError("start_slice: the object mask is empty")
    z = int((occupied[0] + occupied[-1]) // 2)
    return z if int(mask3d[z].sum()) >= min_px else None


def ring(mask: np.ndarray, width: int = RING_WIDTH_PX) -> np.ndarray:
    """Pixels within ``width`` px (face-connected dilation) of the object, the object excluded."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"ring: expected a 2D mask, got shape {mask.shape}")
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def ring_point_prompt(mask: np.ndarray, rng: np.random.Generator,
                      width: int = RING_WIDTH_PX) -> tuple[np.ndarray, np.ndarray]:
    """The 3D protocol's point start on a slice: one random positive inside, one negative in the ring.

    The negative comes from the ring of ``width`` px around the object; if the ring is empty
    (object fills the image) it falls back to the shared rule's bbox ring / background, and to a
    "no point" (label -1) when the object is the whole slice. Returns ``coords`` (2, 2) as
    ``(x, y)`` and ``labels`` (2,) = ``[1, 0]`` (or ``[1, -1]``).
    """
    mask = np.asarray(mask, dtype=bool)
    positive = prompts.sample_point_inside(mask, rng)
    region = ring(mask, width)
    if not region.any():
        region = prompts.bbox_ring(mask)
    if not region.any():
        region = ~mask
    if region.any():
        flat = np.flatnonzero(region)
        row, col = divmod(int(flat[rng.integers(flat.size)]), mask.shape[1])
        return np.stack([positive, np.array([col, row])]), np.array([1, 0])
    return np.stack([positive, np.zeros(2, dtype=np.int64)]), np.array([1, prompts.NO_POINT])
