"""Which objects the interactive protocols prompt, and how a 3D object starts (docs/fidelity.md).

2D: an *object* is one connected component of one class, with full connectivity (8-connected,
``skimage.measure.label``'s default, which the reference evaluation uses), so a 1-px diagonal
vessel stays one object. Components smaller than ``min_size`` pixels are dropped (the reference's
20 px filter). Objects are numbered per class in raster order of their first pixel (the order
``skimage.measure.label`` numbers them in), so a table row ``(case, class, object)`` always means
the same pixels.

3D: by default every class id of a volume is one object (the reference evaluates label ids);
a dataset may list classes whose 26-connected components are objects of their own instead, and
the classes the 3D protocol evaluates at all (``datasets.<name>.interactive3d``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medpipe import prompts

#: components smaller than this (pixels) are not evaluated in 2D (reference: 20)
MIN_OBJECT_PX = 20
#: a 3D object is skipped when its start slice holds fewer pixels than this (reference: 10)
MIN_START_SLICE_PX = 10
#: the 3D point start's negative point keeps this Chebyshev distance from the object (reference: 10)
NEGATIVE_MARGIN_PX = 10


@dataclass(frozen=True)
class Obj:
    """One object: its class id and name, its number within the class, and its boolean mask."""

    class_id: int
    class_name: str
    index: int
    mask: np.ndarray


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully connected components (8 in 2D, 26 in 3D) numbered in raster order of their first pixel."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def _present_classes(label: np.ndarray, classes: dict[int, str]) -> list[int]:
    present = {int(v) for v in np.unique(label)} - {0}
    unknown = sorted(present - set(classes))
    if unknown:
        raise ValueError(f"label map has class ids {unknown} that the dataset does not declare ({sorted(classes)})")
    return sorted(present)


def connected_objects(label: np.ndarray, classes: dict[int, str], min_size: int = MIN_OBJECT_PX) -> list[Obj]:
    """Fully connected components of every class in ``label``, components < ``min_size`` dropped.

    Class ids present in the label map but absent from ``classes`` are an error, since they would
    silently vanish from the results otherwise.
    """
    label = np.asarray(label)
    objects = []
    for class_id in _present_classes(label, classes):
        parts, count = connected_components(label == class_id)
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        index = 0
        for component in range(1, count + 1):
            if sizes[component] < min_size:
                continue
            objects.append(Obj(class_id, classes[class_id], index, parts == component))
            index += 1
    return objects


def objects_3d(label: np.ndarray, classes: dict[int, str], evaluated=None, components=()) -> list[Obj]:
    """The objects of the 3D protocol in a volume: one per class id, or per 26-connected component.

    ``evaluated``: class names the protocol prompts (``None`` = all); ``components``: class names whose
    26-connected components are separate objects (the reference does this for kits, segthy and
    osic_pulmofib's lung class). No size filter: the start-slice rule (``start_slice``) is the only
    one the reference applies to volumes.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"objects_3d: expected a volume, got shape {label.shape}")
    known = set(classes.values())
    for key, names in (("classes", evaluated or ()), ("components", components)):
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"interactive3d.{key}: {unknown} are not class names of the dataset ({sorted(known)})")
    objects = []
    for class_id in _present_classes(label, classes):
        name = classes[class_id]
        if evaluated is not None and name not in evaluated:
            continue
        mask = label == class_id
        if name in components:
            parts, count = connected_components(mask)
            objects += [Obj(class_id, name, i, parts == i + 1) for i in range(count)]
        else:
            objects.append(Obj(class_id, name, 0, mask))
    return objects


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


def negative_region(mask: np.ndarray, margin: int = NEGATIVE_MARGIN_PX) -> np.ndarray:
    """Where the 3D point start draws its negative: the bbox grown by ``margin`` minus the object
    dilated ``margin`` times with a 3x3 square, i.e. pixels at Chebyshev distance > ``margin``
    from the object inside the grown bbox (micro-sam ``PointAndBoxPromptGenerator``,
    ``dilation_strength=10``). Often empty for compact objects; see ``point_start_prompt``.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"negative_region: expected a 2D mask, got shape {mask.shape}")
    x0, y0, x1, y1 = prompts.tight_bbox(mask)
    region = np.zeros_like(mask)
    region[max(y0 - margin, 0): y1 + margin, max(x0 - margin, 0): x1 + margin] = True
    dilated = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=margin)
    return region & ~dilated


def point_start_prompt(mask: np.ndarray, rng: np.random.Generator,
                       margin: int = NEGATIVE_MARGIN_PX) -> tuple[np.ndarray, np.ndarray]:
    """The 3D protocol's point start on a slice: one random positive inside, one negative far from it.

    Positive: uniform over the object's pixels. Negative: uniform over ``negative_region``; when that
    is empty (compact objects), uniform over every non-object pixel of the slice (the reference's
    fallback, which may lie right next to the object); label -1 ("no point") when the object is
    the whole slice. Returns ``coords`` (2, 2) as ``(x, y)`` and ``labels`` (2,).
    """
    mask = np.asarray(mask, dtype=bool)
    positive = prompts.sample_point_inside(mask, rng)
    region = negative_region(mask, margin)
    if not region.any():
        region = ~mask
    if region.any():
        flat = np.flatnonzero(region)
        row, col = divmod(int(flat[rng.integers(flat.size)]), mask.shape[1])
        return np.stack([positive, np.array([col, row])]), np.array([1, 0])
    return np.stack([positive, np.zeros(2, dtype=np.int64)]), np.array([1, prompts.NO_POINT])


def first_component(mask: np.ndarray, connectivity: int = 2) -> np.ndarray:
    """The connected component of ``mask`` that holds its first pixel in raster order.

    The reference keeps only this component of the start-slice prediction (it relabels the
    prediction and propagates label 1). ``connectivity`` 2 = 8-connected (micro-sam up to 1.7,
    ``skimage.measure.label``), 1 = 4-connected (micro-sam 1.8). An empty mask stays empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    parts, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, connectivity))
    return parts == parts.flat[int(np.flatnonzero(mask)[0])]
