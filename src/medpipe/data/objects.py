"""The object table: which 2D images of a store hold objects, and how large each object is.

Ingest writes it once per store, so that finetuning starts by reading a few numpy arrays instead of
scanning every label of the corpus (at 3.7 M images a label scan takes hours per rank).

An *image* is a 2D case or one z-slice of a volume. Its *objects* are what Alg. 1 samples
(:func:`medpipe.finetune.data.objects_of` with ``min_px = 1``): the stored ids of an
instance-labelled store, or the connected components of each class of a semantic label map
(``scipy.ndimage.label``'s default 4-connectivity; components of different classes never merge).
Only images with at least one object get a row. Training filters objects by its own
``min_object_px`` from ``area``; whether an object survives the resize of the whole image is decided
exactly when the sample is made (a sample whose objects all vanish is replaced deterministically),
``height``/``width`` and ``bbox`` let start-up skip the hopeless ones cheaply.

Arrays (all numpy, one row per image or per object; see :data:`IMAGE_COLUMNS`, :data:`OBJECT_COLUMNS`):

- per image: ``case`` (int64, row of the case in the store's case index), ``z`` (int32, slice of a
  volume, -1 for a 2D case), ``height``, ``width`` (int32, native pixels), ``first`` (int64, offset
  of the image's first object in the object arrays), ``count`` (int32, number of objects);
- per object: ``label`` (int32, class id or stored instance id), ``area`` (int64, pixels),
  ``bbox`` (int32, shape (n, 4): y0, x0, y1, x1 with y1, x1 exclusive).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

IMAGE_COLUMNS = {"case": np.int64, "z": np.int32, "height": np.int32, "width": np.int32,
                 "first": np.int64, "count": np.int32}
OBJECT_COLUMNS = {"label": np.int32, "area": np.int64, "bbox": np.int32}


def class_components(label: np.ndarray):
    """``(class id, component map)`` for each class of a semantic label map, ascending, background
    skipped: ``scipy.ndimage.label``'s default 4-connectivity per class, so classes never merge.
    The one definition of a semantic label's objects (here and in finetuning)."""
    for cls in np.unique(label):
        if cls == 0:
            continue
        comp, n = ndimage.label(label == cls)
        if n:
            yield cls, comp


def objects_in(label: np.ndarray, instances: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(label ids, areas, bboxes)`` of the objects of one 2D label map (H, W), in the order of
    :func:`medpipe.finetune.data.objects_of`: class by class (ascending), then component scan
    order; or ascending stored id for an instance-labelled map."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"objects_in: expected a 2D label map, got shape {label.shape}")
    ids, areas, boxes = [], [], []
    if instances:
        sizes = np.bincount(label.ravel().astype(np.int64))
        for value, box in enumerate(ndimage.find_objects(label.astype(np.int64)), start=1):
            if box is not None:
                ids.append(value)
                areas.append(int(sizes[value]))
                boxes.append(box)
    else:
        for cls, comp in class_components(label):
            sizes = np.bincount(comp.ravel())[1:]
            for index, box in enumerate(ndimage.find_objects(comp)):
                ids.append(int(cls))
                areas.append(int(sizes[index]))
                boxes.append(box)
    bbox = np.array([[b[0].start, b[1].start, b[0].stop, b[1].stop] for b in boxes], dtype=np.int32).reshape(-1, 4)
    return np.asarray(ids, dtype=np.int32), np.asarray(areas, dtype=np.int64), bbox


@dataclass(frozen=True)
class ObjectTable:
    """Per-image and per-object arrays of one store (see the module docstring)."""

    case: np.ndarray
    z: np.ndarray
    height: np.ndarray
    width: np.ndarray
    first: np.ndarray
    count: np.ndarray
    label: np.ndarray
    area: np.ndarray
    bbox: np.ndarray

    @classmethod
    def build(cls, images: Iterable[tuple[int, int, np.ndarray]], instances: bool) -> ObjectTable:
        """The table of ``images``: ``(case row, z or -1, 2D label map)`` in the order they should
        appear (case index order, then z)."""
        rows: dict[str, list] = {name: [] for name in IMAGE_COLUMNS}
        parts: dict[str, list] = {name: [] for name in OBJECT_COLUMNS}
        offset = 0
        for case_row, z, label in images:
            ids, areas, boxes = objects_in(label, instances)
            if not len(ids):
                continue
            for name, value in (("case", case_row), ("z", z), ("height", label.shape[0]), ("width", label.shape[1]),
                                ("first", offset), ("count", len(ids))):
                rows[name].append(value)
            parts["label"].append(ids)
            parts["area"].append(areas)
            parts["bbox"].append(boxes)
            offset += len(ids)
        return cls.from_arrays({
            **{name: np.asarray(rows[name], dtype=dtype) for name, dtype in IMAGE_COLUMNS.items()},
            "label": np.concatenate(parts["label"]) if parts["label"] else np.zeros(0, np.int32),
            "area": np.concatenate(parts["area"]) if parts["area"] else np.zeros(0, np.int64),
            "bbox": np.concatenate(parts["bbox"]) if parts["bbox"] else np.zeros((0, 4), np.int32),
        })

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ObjectTable:
        """A table from its arrays (as stored), checking names, dtypes and consistency."""
        missing = sorted((set(IMAGE_COLUMNS) | set(OBJECT_COLUMNS)) - set(arrays))
        if missing:
            raise ValueError(f"object table: missing arrays {missing}")
        columns = {name: np.asarray(arrays[name], dtype=dtype) for name, dtype in {**IMAGE_COLUMNS,
                                                                                   **OBJECT_COLUMNS}.items()}
        columns["bbox"] = columns["bbox"].reshape(-1, 4)
        n_images, n_objects = len(columns["case"]), len(columns["area"])
        if any(len(columns[name]) != n_images for name in IMAGE_COLUMNS):
            raise ValueError("object table: per-image arrays differ in length")
        if len(columns["label"]) != n_objects or len(columns["bbox"]) != n_objects:
            raise ValueError("object table: per-object arrays differ in length")
        if int(columns["count"].sum()) != n_objects:
            raise ValueError(f"object table: counts add up to {int(columns['count'].sum())}, not {n_objects} objects")
        return cls(**columns)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (*IMAGE_COLUMNS, *OBJECT_COLUMNS)}

    def __len__(self) -> int:
        return len(self.case)

    def objects_of_image(self, row: int) -> slice:
        """The slice of the per-object arrays that belongs to image ``row``."""
        return slice(int(self.first[row]), int(self.first[row]) + int(self.count[row]))

    def images_with_objects(self, min_px: int) -> np.ndarray:
        """Boolean per image: at least one object has >= ``min_px`` pixels (vectorised)."""
        if not len(self.area):
            return np.zeros(len(self), dtype=bool)
        big = (self.area >= min_px).astype(np.int64)
        cumulative = np.concatenate([[0], np.cumsum(big)])
        return cumulative[self.first + self.count] - cumulative[self.first] > 0


def concat(tables: list[ObjectTable]) -> ObjectTable:
    """One table from several (e.g. the parts of a scattered ingest), offsets rebased."""
    if not tables:
        return ObjectTable.build([], instances=False)
    offsets = np.cumsum([0] + [len(t.area) for t in tables[:-1]])
    arrays = {name: np.concatenate([getattr(t, name) for t in tables]) for name in (*IMAGE_COLUMNS, *OBJECT_COLUMNS)}
    arrays["first"] = np.concatenate([t.first + off for t, off in zip(tables, offsets)]).astype(np.int64)
    return ObjectTable.from_arrays(arrays)
