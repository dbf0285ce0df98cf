"""Training patches from a dataset store and the split table (the same split for every method).

A case's intensities are scaled once with its own 1st-99th percentiles (``preprocess``), so
patches and full-case inference agree. Patches are read lazily from zarr (a slice of a volume, not
the volume) and centred on a foreground voxel with probability ``fg_prob``: small structures
would otherwise almost never be seen. Every draw comes from the numpy Generator passed in.
"""

from __future__ import annotations

import logging

import numpy as np

from medpipe.semantic.preprocess import intensity_range, scale_intensity
from medpipe.splits import COLUMNS as SPLIT_COLUMNS
from medpipe.splits import SplitError, read_split_table
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)

MAX_FG_POINTS = 20_000


def read_split(path, dataset: str, store: DatasetStore) -> dict[str, list[str]]:
    """Case ids per split (train/val/test) of ``dataset``; every listed case must be in the store."""
    table = read_split_table(path, required=SPLIT_COLUMNS)
    table = table[table["dataset"] == dataset]
    unknown = sorted(set(table["case_id"]) - set(store.case_ids))
    if unknown:
        raise SplitError(f"{path}: cases not in store {store.path}: {unknown[:5]}")
    split = {name: sorted(table.loc[table["split"] == name, "case_id"]) for name in ("train", "val", "test")}
    if not split["train"]:
        raise SplitError(f"{path}: dataset {dataset!r} has no train cases")
    if not split["test"]:
        raise SplitError(f"{path}: dataset {dataset!r} has no test cases")
    return split


def spatial_shape(store: DatasetStore, case_id: str) -> tuple[int, ...]:
    """Spatial shape of a case (drops the colour axis of 2D colour images)."""
    shape = tuple(store.image_array(case_id).shape)
    return shape[: store.ndim]


def load_case(store: DatasetStore, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole case scaled to 0-255 float32, and its label map."""
    image = store.image(case_id)
    lo, hi = intensity_range(image)
    return scale_intensity(image, lo, hi), store.label(case_id).astype(np.int64)


class PatchSampler:
    """Random (image, label) patches of a fixed spatial size from a list of cases.

    ``patch`` has one entry per spatial axis of the store (2 for 2D, 3 for 3D); cases smaller than
    the patch are zero-padded. Images come back as float32 0-255 with the colour axis last (if any).
    """

    def __init__(self, store: DatasetStore, case_ids: list[str], patch, rng: np.random.Generator,
                 fg_prob: float = 0.5):
        if len(patch) != store.ndim:
            raise ValueError(f"{store.path}: patch {tuple(patch)} needs {store.ndim} axes")
        if not case_ids:
            raise ValueError(f"{store.path}: no cases to sample patches from")
        self.store, self.case_ids, self.patch = store, list(case_ids), tuple(int(p) for p in patch)
        self.rng, self.fg_prob = rng, fg_prob
        self.ranges, self.fg = {}, {}
        for case_id in self.case_ids:
            self.ranges[case_id] = intensity_range(store.image_array(case_id)[...])
            points = np.argwhere(store.label_array(case_id)[...] > 0)
            if len(points) > MAX_FG_POINTS:  # a fixed subsample keeps memory bounded for big volumes
                points = points[np.random.default_rng(0).choice(len(points), MAX_FG_POINTS, replace=False)]
            self.fg[case_id] = points

    def _origin(self, case_id: str, shape) -> list[int]:
        points = self.fg[case_id]
        if len(points) and self.rng.random() < self.fg_prob:
            centre = points[self.rng.integers(len(points))]
            return [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, self.patch, shape)]
        return [int(self.rng.integers(0, max(s - p, 0) + 1)) for p, s in zip(self.patch, shape)]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        case_id = self.case_ids[self.rng.integers(len(self.case_ids))]
        shape = spatial_shape(self.store, case_id)
        origin = self._origin(case_id, shape)
        window = tuple(slice(o, o + p) for o, p in zip(origin, self.patch))
        image = scale_intensity(self.store.image_array(case_id)[window], *self.ranges[case_id])
        label = self.store.label_array(case_id)[window].astype(np.int64)
        pad = [(0, p - n) for p, n in zip(self.patch, label.shape)]
        image = np.pad(image, pad + [(0, 0)] * (image.ndim - len(pad)))
        return image, np.pad(label, pad)

    def batch(self, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        pairs = [self.sample() for _ in range(size)]
        return [p[0] for p in pairs], [p[1] for p in pairs]


class WholeImageSampler:
    """Random whole 2D cases with their label maps (SAM-UNETR's ``image_prep: resize``).

    Images come back scaled to 0-255 with their own percentiles (:func:`load_case`), colour last;
    the geometry (resize, centred padding) is the model's business. Draws come from ``rng``.
    """

    def __init__(self, store: DatasetStore, case_ids: list[str], rng: np.random.Generator):
        if store.ndim != 2:
            raise ValueError(f"{store.path}: whole-image sampling is for 2D datasets")
        if not case_ids:
            raise ValueError(f"{store.path}: no cases to sample images from")
        self.store, self.case_ids, self.rng = store, list(case_ids), rng

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return load_case(self.store, self.case_ids[self.rng.integers(len(self.case_ids))])

    def batch(self, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        pairs = [self.sample() for _ in range(size)]
        return [p[0] for p in pairs], [p[1] for p in pairs]
