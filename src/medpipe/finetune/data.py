"""Training samples for Alg. 1 from the zarr stores and the corpus split table.

An *item* is one 2D image: a 2D case, or one z-slice of a 3D volume that holds an object. The
items are numpy arrays (:class:`TrainingItems`) built at start-up from each store's object table
(:mod:`medpipe.data.objects`), never from its labels: images without an object of ``min_object_px``
pixels are left out there, and (resize mode) those whose labels certainly vanish at the patch size.
A sample whose labels vanish anyway is rejected when it is made and replaced deterministically.

Workers hand over lean uint8 samples; the 1024-pixel stage (resize, normalise, pad) runs batched on
the training device (:func:`model_inputs`, called by the trainer through
:meth:`CorpusSamples.to_device`).

Every sample is a pure function of its global *position* in the sample stream and the seed: the
position fixes the epoch, the item (a seeded permutation per epoch) and the random draws (the crop
if any, flips if on, which objects). So data order survives a kill and resume, does not depend on
the number of loader workers, and a DDP run with K ranks sees exactly the samples of a single
process with the same global batch, each rank a different shard.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from medpipe.data.objects import ObjectTable, class_components
from medpipe.errors import MedpipeError
from medpipe.models.transforms import (
    PixelStats,
    centre_pad,
    normalize_pixels,
    pad_to_square,
    percentile_normalize,
    resize_image,
    resize_label,
    resized_shape,
    to_three_channels,
)
from medpipe.splits import SplitError, read_split_table
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)

CORPUS_READ_ROWS = 200_000  # rows of the corpus table per block at start-up


class CorpusError(MedpipeError, RuntimeError):
    """The corpus table or a store does not provide what finetuning needs."""


@dataclass(frozen=True)
class Item:
    dataset: str
    case_id: str
    z: int | None  # slice of a volume, None for a 2D case


def instances_from_semantic(label: np.ndarray, min_px: int) -> tuple[np.ndarray, int]:
    """Objects of a semantic label map: connected components per class with >= ``min_px`` pixels.

    Returns an instance map (0 = background; ids 1..n, numbered class by class, then in scan order
    of ``scipy.ndimage.label``) and n. Components of different classes never merge.
    """
    label = np.asarray(label)
    instances = np.zeros(label.shape, dtype=np.int32)
    count = 0
    for _, comp in class_components(label):
        sizes = np.bincount(comp.ravel())
        keep = np.flatnonzero(sizes >= min_px)
        keep = keep[keep > 0]
        for comp_id in keep:
            count += 1
            instances[comp == comp_id] = count
    return instances, count


def objects_of(label: np.ndarray, min_px: int, instances: bool = False) -> tuple[np.ndarray, int]:
    """Alg. 1's objects of one 2D label map, as ``(object map with ids 1..n, n)``.

    A store whose ``label_kind`` is ``instances`` (SA-Med2D: one object per mask file of the
    corpus) already holds the objects: each stored id with >= ``min_px`` pixels is one object,
    renumbered 1..n in id order. Otherwise the label holds classes and the objects are their
    connected components (:func:`instances_from_semantic`).
    """
    if not instances:
        return instances_from_semantic(label, min_px)
    label = np.asarray(label)
    sizes = np.bincount(label.ravel().astype(np.int64))
    keep = np.flatnonzero(sizes >= min_px)
    keep = keep[keep > 0]
    lut = np.zeros(len(sizes), dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lut[label], int(len(keep))


def _truthy(column: pd.Series) -> pd.Series:
    return column.astype(str).str.strip().str.lower().isin({"true", "1", "yes"})


def corpus_cases(table, split: str, variant: str) -> pd.DataFrame:
    """Rows of the corpus table in ``split`` and in corpus variant ``variant``."""
    try:
        frame = read_split_table(table, required=("dataset", "case_id", "split", f"in_{variant}"))
    except SplitError as exc:
        raise CorpusError(f"{exc} (corpus variant {variant!r})") from exc
    return frame[(frame["split"] == split) & _truthy(frame[f"in_{variant}"])].reset_index(drop=True)


# ------------------------------------------------------------------------------ training items


@dataclass(frozen=True)
class TrainingItems(Sequence):
    """The training images of one split as numpy arrays (no Python object per image): per item its
    dataset (an index into ``datasets``), row in that store's case index and slice (-1 for a 2D
    case); ``case_ids`` holds each store's case index once (UTF-8 bytes), shared by the train and
    val items. Forked loader workers share these pages instead of copying millions of objects.
    Reads like a sequence of :class:`Item`."""

    datasets: tuple[str, ...]
    case_ids: tuple[np.ndarray, ...]  # per dataset: its store's case ids (bytes), sorted
    dataset: np.ndarray  # int32
    case: np.ndarray  # int32, row in case_ids[dataset]
    z: np.ndarray  # int32, -1 for a 2D case

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index):
        if not isinstance(index, int | np.integer):
            raise TypeError("TrainingItems: index with an integer")
        d, z = int(self.dataset[index]), int(self.z[index])
        return Item(self.datasets[d], self.case_ids[d][int(self.case[index])].decode(), None if z < 0 else z)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (per-item arrays and the case indexes they refer to)."""
        return sum(a.nbytes for a in (self.dataset, self.case, self.z, *self.case_ids))

    @classmethod
    def from_items(cls, items) -> TrainingItems:
        """From a list of :class:`Item` (small corpora, tests)."""
        datasets = tuple(sorted({item.dataset for item in items}))
        case_ids = tuple(np.unique(np.array([i.case_id.encode() for i in items if i.dataset == name], dtype=bytes))
                         for name in datasets)
        dataset = np.array([datasets.index(i.dataset) for i in items], dtype=np.int32)
        case = np.array([np.searchsorted(case_ids[d], i.case_id.encode()) for d, i in zip(dataset, items)],
                        dtype=np.int32)
        return cls(datasets, case_ids, dataset, case, np.array([-1 if i.z is None else i.z for i in items],
                                                               dtype=np.int32))


def load_object_table(store: DatasetStore) -> ObjectTable:
    """The store's object table (written by ingest); for a store written before ingest kept one,
    built from its labels, with a warning (that scan is what made start-up take hours on the whole
    corpus; re-ingest to avoid it). Start-up calls it once per store (:func:`store_images`)."""
    table = store.object_table()
    if table is not None:
        return table
    log.warning("%s: the store has no object table (written before ingest kept one); scanning its %d cases' "
                "labels once (re-ingest the dataset to start without a label scan)", store.path, store.case_count)
    return ObjectTable.build(_labelled_images(store), instances=store.label_kind == "instances")


# per process, per store (path, its zarr.json's mtime): its case index, and the (case row, z) of its
# training images per (min_object_px, frame); the train and val items of a run share them, and the
# object table is read once and dropped (at 3.7 M images its arrays are ~0.6 GB)
_CASE_INDEX: dict[tuple, np.ndarray] = {}
_IMAGES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _store_key(store: DatasetStore) -> tuple:
    return str(store.path.resolve()), (store.path / "zarr.json").stat().st_mtime_ns


def store_case_ids(store: DatasetStore) -> np.ndarray:
    """The store's case ids (bytes, sorted), read once per process."""
    key = _store_key(store)
    if key not in _CASE_INDEX:
        _CASE_INDEX[key] = store.case_index()[0]
    return _CASE_INDEX[key]


def store_images(store: DatasetStore, min_object_px: int, frame: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(case rows, z)`` (int32) of the store's training images (:func:`training_images` of its
    object table), computed once per process and setting."""
    key = (*_store_key(store), int(min_object_px), frame)
    if key not in _IMAGES:
        table = load_object_table(store)
        rows = training_images(table, min_object_px, frame)
        _IMAGES[key] = (table.case[rows].astype(np.int32), table.z[rows].astype(np.int32))
    return _IMAGES[key]


def _labelled_images(store: DatasetStore):
    """``(case row, z or -1, 2D label)`` of every image of ``store`` that has a labelled pixel."""
    ids = store.case_ids
    for row, case_id in enumerate(tqdm(ids, desc=f"scan {store.name}", disable=len(ids) < 50)):
        label = store.label(case_id)
        if store.ndim == 3:
            for z in np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1)):
                yield row, int(z), label[z]
        else:
            yield row, -1, label


def _truthy_codes(column: pd.Series) -> np.ndarray:
    """:func:`_truthy` of a categorical column, decided once per distinct value."""
    categories = column.cat.categories.astype(str)
    truth = np.append(categories.str.strip().str.lower().isin(["true", "1", "yes"]), False)  # code -1: missing
    return truth[column.cat.codes.to_numpy()]


def _utf8(values: np.ndarray) -> np.ndarray:
    """Text values -> UTF-8 byte strings (numpy's fast ASCII cast where it applies)."""
    text = values.astype(str)
    try:
        return text.astype("S")
    except UnicodeEncodeError:
        return np.char.encode(text, "utf-8")


def corpus_rows(table, split: str, variant: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per dataset: the case ids (bytes) of the corpus table's rows in ``split`` and in variant
    ``variant``, and their row numbers in the table. Read in blocks of the needed columns only,
    kept as numpy byte strings (the corpus table has millions of rows)."""
    column = f"in_{variant}"
    needed = ["dataset", "case_id", "split", column]
    parts: dict[str, list] = {}
    offset = 0
    few = {name: "category" for name in ("dataset", "split", column)}  # few distinct values: no string per row
    try:
        for block in pd.read_csv(table, sep="\t", dtype={"case_id": str, **few}, keep_default_na=False,
                                 usecols=needed, chunksize=CORPUS_READ_ROWS):
            wanted = (block["split"] == split).to_numpy() & _truthy_codes(block[column])
            chosen = np.flatnonzero(wanted)
            datasets = block["dataset"].cat
            names = datasets.codes.to_numpy()[chosen]
            for code in np.unique(names).tolist():
                rows = chosen[names == code]
                ids = _utf8(block["case_id"].to_numpy()[rows])
                parts.setdefault(str(datasets.categories[code]), []).append((ids, rows + offset))
            offset += len(block)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorpusError(f"{table}: cannot read the corpus table ({exc}) (corpus variant {variant!r})") from exc
    except ValueError as exc:  # usecols names a missing column
        raise CorpusError(f"{table}: corpus table lacks columns of {needed} ({exc}) "
                          f"(corpus variant {variant!r})") from exc
    return {name: (np.concatenate([ids for ids, _ in p]), np.concatenate([rows for _, rows in p]).astype(np.int64))
            for name, p in parts.items()}


@cache
def sampled_indices(size: int, target: int) -> np.ndarray:
    """The source rows (or columns) a nearest-exact resize from ``size`` to ``target`` pixels picks,
    from torch's own kernel: :func:`resize_label` of a map equals indexing it with these (tested)."""
    if target < 1:  # an image too thin to resize: nothing is left of it
        return np.zeros(0, dtype=np.int64)
    grid = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    picked = F.interpolate(grid, size=(target, 1), mode="nearest-exact")[0, 0, :, 0].to(torch.int64).numpy()
    picked.setflags(write=False)
    return picked


def may_survive(table: ObjectTable, frame: int) -> np.ndarray:
    """Per image: whether some labelled pixel can be left after resizing the image (longest side) to
    ``frame`` pixels, decided from the bounding boxes. False is exact (every object's box misses the
    rows or the columns the nearest resize picks: the image has nothing left, as a label scan would
    find); True may still lose everything (a thin, sparse object), which the sample rejects at load
    time (:class:`CorpusSamples`). Images are taken by size (a few hundred sizes in SA-Med2D), so the
    per-object work is only for images that shrink."""
    out = np.ones(len(table), dtype=bool)
    if not len(table):
        return out
    sizes = table.height.astype(np.int64) << 32 | table.width.astype(np.int64)
    unique, inverse = np.unique(sizes, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(unique)))])
    for g, key in enumerate(unique.tolist()):
        height, width = key >> 32, key & 0xFFFFFFFF
        new_h, new_w = resized_shape((height, width), frame)
        if new_h >= height and new_w >= width:  # not shrunk: every pixel is kept
            continue
        images = order[bounds[g]:bounds[g + 1]]
        counts = table.count[images].astype(np.int64)
        starts = np.repeat(table.first[images].astype(np.int64) - np.cumsum(counts) + counts, counts)
        objects = starts + np.arange(int(counts.sum()))  # the objects of these images, image by image
        box = table.bbox[objects]
        rows, cols = sampled_indices(height, new_h), sampled_indices(width, new_w)
        hit = ((np.searchsorted(rows, box[:, 2]) > np.searchsorted(rows, box[:, 0]))
               & (np.searchsorted(cols, box[:, 3]) > np.searchsorted(cols, box[:, 1])))
        out[images] = np.add.reduceat(hit, np.cumsum(counts) - counts) > 0
    return out


def training_images(table: ObjectTable, min_object_px: int, frame: int | None) -> np.ndarray:
    """Rows of ``table`` that are training images: an object of >= ``min_object_px`` pixels, and
    (resize mode, ``frame`` given) maybe a labelled pixel left at that size (:func:`may_survive`)."""
    if not len(table):
        return np.zeros(0, dtype=np.int64)
    keep = np.maximum.reduceat(table.area, table.first.astype(np.int64)) >= min_object_px
    if frame is not None:
        keep &= may_survive(table, frame)
    return np.flatnonzero(keep)


def build_items(table, store_paths: dict[str, str], split: str, variant: str, min_object_px: int,
                frame: int | None = None) -> TrainingItems:
    """Index every image of ``split`` that holds at least one object (2D cases, slices of volumes),
    in the corpus table's row order, then by slice.

    Reads arrays only: the corpus table's columns, each store's case index and object table (a
    store without one is scanned once, :func:`load_object_table`). ``frame``: the side the whole
    images are resized to (``image_prep: resize``); images whose labels certainly vanish at that
    size are left out, those that may are rejected when the sample is made.
    """
    for path in store_paths.values():  # first, so that each object table is dropped before the corpus is read
        store_images(DatasetStore(path), min_object_px, frame)
    selected = corpus_rows(table, split, variant)
    names = sorted(selected)
    missing = [name for name in names if name not in store_paths]
    if missing:
        raise CorpusError(f"{table}: dataset {missing[0]!r} has no store among {sorted(store_paths)}")
    case_ids, parts, n_cases = [], [], 0
    for code, name in enumerate(names):
        store = DatasetStore(store_paths[name])
        ids, table_rows = selected.pop(name)
        n_cases += len(ids)
        cases = store_case_ids(store)
        where = np.clip(np.searchsorted(cases, ids), 0, max(len(cases) - 1, 0))
        found = (cases[where] == ids) if len(cases) else np.zeros(len(ids), dtype=bool)
        if not found.all():
            absent = [v.decode() for v in ids[~found][:5].tolist()]
            raise CorpusError(f"{table}: cases of dataset {name!r} are not in its store {store.path}, e.g. {absent}")
        del ids, found
        position = np.full(len(cases), -1, dtype=np.int64)
        position[where] = table_rows
        del where, table_rows
        case, z = store_images(store, min_object_px, frame)
        chosen = position[case] >= 0
        parts.append((np.full(int(chosen.sum()), code, dtype=np.int32), case[chosen], z[chosen],
                      position[case[chosen]]))
        case_ids.append(cases)
    if not parts:
        items = TrainingItems.from_items([])
    else:
        dataset, case, z, position = (np.concatenate([p[i] for p in parts]) for i in range(4))
        del parts
        order = np.lexsort((z, position))
        items = TrainingItems(tuple(names), tuple(case_ids), dataset[order], case[order], z[order])
    log.info("%s: %d images with objects from %d cases", split, len(items), n_cases)
    return items


def _crop_window(instances: np.ndarray, patch: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """A patch x patch window (clipped to the image) that contains a random object pixel."""
    fg = np.flatnonzero(instances)
    cy, cx = divmod(int(fg[rng.integers(fg.size)]), instances.shape[1])
    windows = []
    for centre, extent in ((cy, instances.shape[0]), (cx, instances.shape[1])):
        size = min(patch, extent)
        start = int(np.clip(centre - rng.integers(0, size), 0, extent - size))
        windows.append(slice(start, start + size))
    return windows[0], windows[1]


def _flip(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random horizontal and vertical flips of every array (H, W, ...)."""
    arrays = list(arrays)
    if rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if rng.random() < 0.5:
        arrays = [a[::-1] for a in arrays]
    return arrays


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


# ------------------------------------------------------------------------------ samples
#
# A worker hands over a *lean* sample: the training frame as uint8 and one uint8 map of the chosen
# objects (1..k in the order drawn, FOREGROUND for every other labelled pixel, 0 background), so a
# sample at patch 512 is <= 1 MB instead of 14 MB of float32. The trainer brings a batch to the
# model's input size on its device (:func:`model_inputs`): resize, pixel normalisation, padding,
# masks. The result equals the sample today's per-sample path made (kept in tests/legacy_samples.py)
# up to the uint8 rounding of the frame (<= 0.5 grey levels before SAM's resize).

FOREGROUND = 255  # value of a labelled pixel that is not one of the chosen objects in the object map


def _present(instances: np.ndarray, count: int) -> list[int]:
    """Ids 1..count that occur in ``instances``."""
    seen = np.bincount(instances.ravel(), minlength=count + 1)[1:count + 1]
    return (np.flatnonzero(seen) + 1).tolist()


def _object_map(instances: np.ndarray, count: int, foreground: np.ndarray, n_obj: int,
                rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Draw up to ``n_obj`` of the objects present in ``instances`` without replacement (as the
    reference) and return the object map (see above) and the number drawn."""
    present = _present(instances, count)
    chosen = rng.choice(present, size=min(n_obj, len(present)), replace=False)
    lut = np.zeros(max(count, int(instances.max(initial=0))) + 1, dtype=np.uint8)
    lut[np.asarray(chosen, dtype=np.int64)] = np.arange(1, len(chosen) + 1, dtype=np.uint8)
    objects = lut[instances]
    objects[(objects == 0) & foreground] = FOREGROUND
    return objects, len(chosen)


def _order_statistics(values: np.ndarray, ranks: list[int]) -> np.ndarray:
    """The ``ranks``-th smallest of ``values`` (float64): a histogram for integer images, else a partition."""
    flat = values.ravel()
    if flat.dtype.kind in "ui" and flat.dtype.itemsize <= 2:
        low = int(flat.min())
        cumulative = np.cumsum(np.bincount(flat.astype(np.int64) - low))
        return (np.searchsorted(cumulative, np.asarray(ranks), side="right") + low).astype(np.float64)
    return np.partition(flat.astype(np.float32, copy=False), ranks)[ranks].astype(np.float64)


def _grey_normalize(values: np.ndarray, repeats: int = 3, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """:func:`percentile_normalize` of a grey image repeated to ``repeats`` channels, computed on one
    channel (H, W): the percentiles of the repeated values from order statistics of the single
    channel (numpy's linear rule), so the three-channel work is not done three times. Equal to the
    three-channel result up to float rounding of the percentiles (~1e-12)."""
    n = values.size * repeats
    picks = []
    for q in (lower / 100, upper / 100):
        virtual = q * (n - 1)
        below = int(np.floor(virtual))
        picks.append((below // repeats, min(below + 1, n - 1) // repeats, virtual - below))
    ranks = sorted({rank for a, b, _ in picks for rank in (a, b)})
    order = dict(zip(ranks, _order_statistics(values, ranks).tolist()))
    lo, hi = (np.float64(order[a] + (order[b] - order[a]) * gamma) for a, b, gamma in picks)
    image = np.asarray(values, dtype=np.float32)
    if hi <= lo:
        return np.zeros_like(image)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.float32)


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    """A (H, W, 3) 0-255 float frame -> (C, H, W) uint8, one channel when the three are equal."""
    frame = np.rint(frame).astype(np.uint8)
    if np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 0], frame[..., 2]):
        frame = frame[..., :1]
    return np.ascontiguousarray(frame.transpose(2, 0, 1))


def _resized(array: np.ndarray, target: int) -> np.ndarray:
    """A nearest-exact resize of a 2D map, longest side to ``target`` (= :func:`resize_label`)."""
    new_h, new_w = resized_shape(array.shape, target)
    return array[np.ix_(sampled_indices(array.shape[0], new_h), sampled_indices(array.shape[1], new_w))]


def _centre_pad(array: np.ndarray, size: int) -> np.ndarray:
    """numpy :func:`centre_pad` of a 2D map (the extra pixel of an odd padding top/left)."""
    h, w = array.shape
    top, left = -(-(size - h) // 2), -(-(size - w) // 2)
    out = np.zeros((size, size), dtype=array.dtype)
    out[top:top + h, left:left + w] = array
    return out


def _lean_crop(image, label, instances, rng, patch_size, input_size, n_obj, min_object_px, flips,
               stored_instances: bool) -> dict:
    """``image_prep: crop``: a patch around a random object at native resolution; objects drawn at
    the input size (SAM's geometry: longest side resized, padded bottom/right), handed over at the
    crop's size with its ``size`` (the device resizes)."""
    rows, cols = _crop_window(instances, patch_size, rng)
    image, label = image[rows, cols], label[rows, cols]
    if flips:
        image, label = _flip(rng, image, label)
    instances, count = objects_of(label, min_object_px, stored_instances)
    if count == 0:
        instances, count = objects_of(label, 1, stored_instances)
    present = _present(_resized(instances, input_size), count)  # what the input-size masks would hold
    chosen = rng.choice(present, size=min(n_obj, len(present)), replace=False)
    lut = np.zeros(count + 1, dtype=np.uint8)
    lut[np.asarray(chosen, dtype=np.int64)] = np.arange(1, len(chosen) + 1, dtype=np.uint8)
    objects = lut[instances]
    objects[(objects == 0) & (label > 0)] = FOREGROUND
    h, w = objects.shape
    frame = np.zeros((3, patch_size, patch_size), dtype=np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
        pixels = np.rint(_grey_normalize(image.reshape(image.shape[:2]))).astype(np.uint8)[None]
    else:
        pixels = _to_uint8(percentile_normalize(to_three_channels(image)))
    frame = frame[:pixels.shape[0]]
    frame[:, :h, :w] = pixels
    padded = np.zeros((patch_size, patch_size), dtype=np.uint8)
    padded[:h, :w] = objects
    return {"image": frame, "objects": padded, "count": len(chosen), "size": (h, w)}


def _lean_resize(image, label, instances, count, rng, patch_size, n_obj, flips, stored_instances: bool) -> dict | None:
    """``image_prep: resize`` (the reference's training images, docs/fidelity.md): the whole image,
    longest side resized to ``patch_size`` and zero-padded to a centred square; intensities
    percentile-normalised once more over that padded square (the reference's raw transform of the
    training sample). Objects and foreground stay in that frame (nearest-neighbour resize, same
    padding), where the loss is computed. ``None`` when nothing labelled is left at that size."""
    if flips:
        image, label, instances = _flip(rng, image, label, instances)
    foreground = _centre_pad(_resized(label, patch_size) > 0, patch_size)
    if not foreground.any():
        return None
    inst = _centre_pad(_resized(instances, patch_size), patch_size)
    if not inst.any():  # every object vanished at this size: the components of the resized label
        small, count = objects_of(_resized(label, patch_size).astype(np.int32), 1, stored_instances)
        inst = _centre_pad(small, patch_size)
    if image.ndim == 2 or image.shape[-1] == 1:  # grey: one channel stands for the three equal ones
        frame = torch.from_numpy(_grey_normalize(image.reshape(image.shape[:2])))[None]
        frame = centre_pad(resize_image(frame, patch_size), patch_size)
        frame = np.rint(_grey_normalize(frame[0].numpy())).astype(np.uint8)[None]
    else:
        frame = torch.from_numpy(percentile_normalize(to_three_channels(image))).permute(2, 0, 1)
        frame = centre_pad(resize_image(frame, patch_size), patch_size)
        frame = _to_uint8(percentile_normalize(frame.permute(1, 2, 0).numpy()))
    objects, k = _object_map(inst, count, foreground, n_obj, rng)
    return {"image": frame, "objects": objects, "count": k, "size": (patch_size, patch_size)}


def lean_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                input_size: int, n_obj: int, min_object_px: int, flips: bool, image_prep: str = "resize",
                instances: bool = False) -> dict | None:
    """What a loader worker hands over for one 2D image (H, W) or (H, W, C) and its label (H, W):
    ``image`` (C, P, P) uint8 (C = 1 for grey), ``objects`` (P, P) uint8 (the chosen objects 1..k,
    :data:`FOREGROUND`, 0), ``count`` k, ``size`` of the valid region (crop mode) with P =
    ``patch_size``. Objects are those of :func:`objects_of` (>= ``min_object_px`` pixels); up to
    ``n_obj`` are drawn without replacement. ``None`` (resize mode) when nothing labelled is left at
    the patch size: the caller rejects the image (:class:`CorpusSamples` replaces it)."""
    if n_obj >= FOREGROUND:
        raise ValueError(f"n_obj must be < {FOREGROUND} (the object map is uint8), got {n_obj}")
    stored_instances = instances
    instances, count = objects_of(label, min_object_px, stored_instances)
    if count == 0:
        raise CorpusError("make_sample: the image has no object")
    if image_prep == "resize":
        return _lean_resize(image, label, instances, count, rng, patch_size, n_obj, flips, stored_instances)
    if image_prep == "crop":
        return _lean_crop(image, label, instances, rng, patch_size, input_size, n_obj, min_object_px, flips,
                          stored_instances)
    raise ValueError(f"unknown image_prep {image_prep!r}; expected resize or crop")


def model_inputs(batch: dict, device, *, image_prep: str, input_size: int, pixels: PixelStats) -> dict:
    """A collated lean batch (:func:`collate`) on ``device`` as the model takes it, batched there:
    ``image`` (B, 3, S, S) float normalised with the model's ``pixels`` (SAM's geometry: resized,
    longest side S = ``input_size``, padded bottom/right), ``masks`` (B, k, M, M) and ``foreground``
    (B, 1, M, M) uint8 with k the smallest object count of the batch and M the patch size (resize)
    or S (crop); ``position`` as given."""
    image = batch["image"].to(device, non_blocking=True).float()
    objects = batch["objects"].to(device, non_blocking=True)
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    if image_prep == "resize":
        image = pad_to_square(normalize_pixels(resize_image(image, input_size), pixels), input_size)
    else:  # crop: each crop has its own size
        sizes = batch["size"].tolist()
        image = torch.stack([pad_to_square(normalize_pixels(resize_image(img[:, :h, :w], input_size), pixels),
                                           input_size) for img, (h, w) in zip(image, sizes)])
        objects = torch.stack([pad_to_square(resize_label(obj[:h, :w], input_size), input_size)
                               for obj, (h, w) in zip(objects, sizes)])
    k = int(batch["count"].min())
    ids = torch.arange(1, k + 1, device=objects.device, dtype=objects.dtype).view(1, k, 1, 1)
    return {"image": image, "masks": (objects[:, None] == ids).to(torch.uint8),
            "foreground": (objects[:, None] > 0).to(torch.uint8), "position": batch["position"]}


def make_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                input_size: int, n_obj: int, min_object_px: int, flips: bool, pixels: PixelStats,
                image_prep: str = "resize", instances: bool = False) -> dict:
    """One training sample as the model takes it: :func:`lean_sample` then :func:`model_inputs` on
    the CPU. Returns ``image`` (3, input_size, input_size) normalised with the model's ``pixels``
    statistics (:func:`medpipe.models.transforms.pixel_stats`), ``masks`` (k, S, S) and
    ``foreground`` (1, S, S) with S = ``patch_size`` (resize) or the input size (crop)."""
    lean = lean_sample(image, label, rng, patch_size=patch_size, input_size=input_size, n_obj=n_obj,
                       min_object_px=min_object_px, flips=flips, image_prep=image_prep, instances=instances)
    if lean is None:
        raise CorpusError("make_sample: nothing labelled is left at the patch size")
    batch = model_inputs(collate([{**lean, "position": 0}]), "cpu", image_prep=image_prep, input_size=input_size,
                         pixels=pixels)
    return {key: batch[key][0] for key in ("image", "masks", "foreground")}


#: how many deterministic replacements a rejected sample may try before the corpus is called broken
MAX_REPLACEMENTS = 100


class CorpusSamples(Dataset):
    """Map-style dataset indexed by global sample position (see the module docstring); lean samples
    (:func:`lean_sample`), brought to the model by :meth:`to_device` with ``pixels``, the statistics
    of the model being trained.

    An image whose labels vanish at the patch size (resize mode; start-up leaves out only those it
    can prove vanish) is rejected when its sample is made and replaced by the image at a position
    drawn from ``(seed, stream, position, attempt)``: every sample stays a pure function of (seed,
    position), so loader workers and a resumed run see the same ones.
    """

    def __init__(self, items, store_paths: dict[str, str], settings: dict, seed: int, stream: int = 0,
                 *, pixels: PixelStats):
        if not len(items):
            raise CorpusError("no images with objects in this part of the corpus")
        self.items = items if isinstance(items, TrainingItems) else TrainingItems.from_items(list(items))
        self.store_paths, self.settings = dict(store_paths), settings
        self.pixels = pixels
        self.seed, self.stream = int(seed), int(stream)
        self._stores: dict[str, DatasetStore] = {}
        self._perms: dict[int, np.ndarray] = {}
        self.rejected = 0  # samples replaced in this process (a count for logs and tests)

    def __len__(self) -> int:  # positions are unbounded; one epoch is len(items)
        return len(self.items)

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self.items))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.items))}
        return int(self._perms[epoch][offset])

    def item_at(self, position: int) -> Item:
        return self.items[self.index_at(position)]

    def _store(self, name: str) -> DatasetStore:
        if name not in self._stores:
            self._stores[name] = DatasetStore(self.store_paths[name])
        return self._stores[name]

    def _lean(self, index: int, rng: np.random.Generator) -> dict | None:
        item = self.items[index]
        store = self._store(item.dataset)
        if item.z is None:
            image, label = store.image(item.case_id), store.label(item.case_id)
        else:
            image = store.image_array(item.case_id)[item.z]
            label = store.label_array(item.case_id)[item.z]
        s = self.settings
        return lean_sample(np.asarray(image), np.asarray(label), rng, patch_size=s["patch_size"],
                           input_size=s["input_size"], n_obj=s["n_obj"], min_object_px=s["min_object_px"],
                           flips=s["flips"], image_prep=s["image_prep"], instances=store.label_kind == "instances")

    def __getitem__(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, self.stream, 1_000_003, int(position)])
        sample = self._lean(self.index_at(position), rng)
        for attempt in range(1, MAX_REPLACEMENTS + 1):
            if sample is not None:
                break
            self.rejected += 1
            draw = np.random.default_rng([self.seed, self.stream, 2_000_003, int(position), attempt])
            sample = self._lean(int(draw.integers(len(self.items))), draw)
        if sample is None:
            raise CorpusError(f"sample {position}: {MAX_REPLACEMENTS} images in a row lost every label at patch size "
                              f"{self.settings['patch_size']}; is min_object_px or patch_size right for this corpus?")
        sample["position"] = int(position)
        return sample

    def to_device(self, batch: dict, device) -> dict:
        """A collated batch of this dataset as the model takes it, on ``device`` (:func:`model_inputs`)."""
        return model_inputs(batch, device, image_prep=self.settings["image_prep"],
                            input_size=self.settings["input_size"], pixels=self.pixels)

def collate(samples: list[dict]) -> dict:
    """Stack lean samples (uint8; grey frames stay one channel unless the batch mixes in colour);
    the number of objects is cut to the smallest count in the batch on the device (Alg. 1)."""
    channels = max(s["image"].shape[0] for s in samples)
    images = [np.broadcast_to(s["image"], (channels, *s["image"].shape[1:])) for s in samples]
    return {
        "image": torch.from_numpy(np.stack(images)),
        "objects": torch.from_numpy(np.stack([s["objects"] for s in samples])),
        "count": torch.tensor([s["count"] for s in samples], dtype=torch.int64),
        "size": torch.tensor([s["size"] for s in samples], dtype=torch.int64),
        "position": torch.tensor([s["position"] for s in samples], dtype=torch.int64),
    }

class IterationBatches(torch.utils.data.Sampler):
    """Batches of global positions for iterations ``start .. stop-1``; rank r takes its shard.

    Iteration ``it`` covers positions ``it*G .. (it+1)*G - 1`` of the stream (G = B*W*A: B per-rank
    batch, W ranks, A micro-batches accumulated per rank); its micro-batch a on rank r takes
    ``((it*A + a)*W + r)*B + (0..B-1)`` (A = 1: ``it*B*W + r*B + ...``), so every split of G reads
    the same positions per iteration (:mod:`medpipe.finetune.batching`).
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 accumulation: int = 1):
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch_size, rank, world_size
        self.accumulation = accumulation

    def __iter__(self):
        for it in range(self.start, self.stop):
            for micro in range(self.accumulation):
                base = ((it * self.accumulation + micro) * self.world + self.rank) * self.batch
                yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accumulation
