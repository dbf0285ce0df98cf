"""Training samples for Alg. 1 from the zarr stores and the corpus split table.

An *item* is one 2D image: a 2D case, or one z-slice of a 3D volume that holds an object. Items
with no object are left out when the index is built (the sampler skips images without objects).

Every sample is a pure function of its global *position* in the sample stream and the seed: the
position fixes the epoch, the item (a seeded permutation per epoch) and the random draws (the crop
if any, flips if on, which objects). So data order survives a kill and resume, does not depend on
the number of loader workers, and a DDP run with K ranks sees exactly the samples of a single
process with the same global batch, each rank a different shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.data import Dataset
from tqdm import tqdm

from medpipe.models.transforms import (
    PixelStats,
    centre_pad,
    pad_to_square,
    percentile_normalize,
    resize_image,
    resize_label,
    sam_input,
    to_three_channels,
)
from medpipe.splits import SplitError, read_split_table
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)


class CorpusError(RuntimeError):
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
    for cls in np.unique(label):
        if cls == 0:
            continue
        comp, n = ndimage.label(label == cls)
        if n == 0:
            continue
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


def _has_object(label: np.ndarray, min_object_px: int, frame: int | None, instances: bool = False) -> bool:
    """An image is a training image when it holds an object, and (``frame`` given: resize mode)
    when some labelled pixel is left after resizing it to the ``frame`` side (the reference's
    sampler rejects samples without an object in the resized label)."""
    if not objects_of(label, min_object_px, instances)[1]:
        return False
    return frame is None or bool(resize_label(_as_tensor((label > 0).astype(np.uint8)), frame).any())


def build_items(table, store_paths: dict[str, str], split: str, variant: str, min_object_px: int,
                frame: int | None = None) -> list[Item]:
    """Index every image of ``split`` that holds at least one object (2D cases, slices of volumes).

    ``frame``: the side the whole images are resized to (``image_prep: resize``); images whose
    labels vanish at that size are left out.
    """
    rows = corpus_cases(table, split, variant)
    stores: dict[str, DatasetStore] = {}
    items: list[Item] = []
    for row in tqdm(rows.itertuples(), total=len(rows), desc=f"index {split}", disable=len(rows) < 50):
        if row.dataset not in store_paths:
            raise CorpusError(f"{table}: dataset {row.dataset!r} has no store among {sorted(store_paths)}")
        store = stores.get(row.dataset) or stores.setdefault(row.dataset, DatasetStore(store_paths[row.dataset]))
        label = store.label(row.case_id)
        instances = store.label_kind == "instances"
        if store.ndim == 3:
            for z in np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1)):
                if _has_object(label[z], min_object_px, frame, instances):
                    items.append(Item(row.dataset, row.case_id, int(z)))
        elif _has_object(label, min_object_px, frame, instances):
            items.append(Item(row.dataset, row.case_id, None))
    log.info("%s: %d images with objects from %d cases", split, len(items), len(rows))
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


def _choose(inst: torch.Tensor, count: int, n_obj: int, rng: np.random.Generator) -> torch.Tensor:
    """Masks (k, H, W) of up to ``n_obj`` objects of ``inst`` drawn without replacement."""
    present = [i for i in range(1, count + 1) if bool((inst == i).any())]
    chosen = rng.choice(present, size=min(n_obj, len(present)), replace=False)
    return torch.stack([(inst == int(i)) for i in chosen]).to(torch.uint8)


def _crop_sample(image, label, instances, rng, patch_size, input_size, n_obj, min_object_px, flips,
                 stored_instances: bool, pixels: PixelStats) -> dict:
    """``image_prep: crop``: a patch around a random object at native resolution, then SAM's
    geometry; masks at the input size."""
    rows, cols = _crop_window(instances, patch_size, rng)
    image, label = image[rows, cols], label[rows, cols]
    if flips:
        image, label = _flip(rng, image, label)
    instances, count = objects_of(label, min_object_px, stored_instances)
    if count == 0:
        instances, count = objects_of(label, 1, stored_instances)
    tensor = sam_input(percentile_normalize(to_three_channels(image)), input_size, pixels)
    inst = pad_to_square(resize_label(_as_tensor(instances), input_size), input_size)
    fg = pad_to_square(resize_label(_as_tensor((label > 0).astype(np.uint8)), input_size), input_size)
    return {"image": tensor, "masks": _choose(inst, count, n_obj, rng), "foreground": fg[None].to(torch.uint8)}


def _resize_sample(image, label, instances, count, rng, patch_size, input_size, n_obj, flips,
                   stored_instances: bool, pixels: PixelStats) -> dict:
    """``image_prep: resize`` (the reference's training images, docs/fidelity.md): the whole image,
    longest side resized to ``patch_size`` and zero-padded to a centred square; intensities
    percentile-normalised once more over that padded square (the reference's raw transform of the
    training sample); then SAM's transform to the input size. Objects, masks and foreground stay in
    the ``patch_size`` frame (nearest-neighbour resize, same padding), where the loss is computed."""
    if flips:
        image, label, instances = _flip(rng, image, label, instances)
    frame = torch.from_numpy(percentile_normalize(to_three_channels(image))).permute(2, 0, 1)
    frame = centre_pad(resize_image(frame, patch_size), patch_size)
    frame = percentile_normalize(frame.permute(1, 2, 0).numpy())
    tensor = sam_input(frame, input_size, pixels)
    inst = centre_pad(resize_label(_as_tensor(instances), patch_size), patch_size)
    fg = centre_pad(resize_label(_as_tensor((label > 0).astype(np.uint8)), patch_size), patch_size)
    if not inst.any():  # every object vanished at this size: the components of the resized label
        resized = resize_label(_as_tensor(label.astype(np.int32)), patch_size).numpy()
        small, count = objects_of(resized, 1, stored_instances)
        inst = centre_pad(_as_tensor(small), patch_size)
    return {"image": tensor, "masks": _choose(inst, count, n_obj, rng), "foreground": fg[None].to(torch.uint8)}


def make_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                input_size: int, n_obj: int, min_object_px: int, flips: bool, pixels: PixelStats,
                image_prep: str = "resize", instances: bool = False) -> dict:
    """One training sample from a 2D image (H, W) or (H, W, C) and its semantic label (H, W).

    Objects (:func:`objects_of`) are the stored instances (``instances``: an instance-labelled
    store) or the connected components per class, with >= ``min_object_px`` pixels; up to
    ``n_obj`` of them are sampled without replacement. ``image_prep`` picks the geometry
    (:func:`_resize_sample`, the default and the reference, or :func:`_crop_sample`). Returns
    ``image`` (3, input_size, input_size) normalised with the model's ``pixels`` statistics
    (:func:`medpipe.models.transforms.pixel_stats`), ``masks`` (k, S, S) and ``foreground``
    (1, S, S) with S = ``patch_size`` (resize) or the input size (crop).
    """
    stored_instances = instances
    instances, count = objects_of(label, min_object_px, stored_instances)
    if count == 0:
        raise CorpusError("make_sample: the image has no object")
    if image_prep == "resize":
        return _resize_sample(image, label, instances, count, rng, patch_size, input_size, n_obj, flips,
                              stored_instances, pixels)
    if image_prep == "crop":
        return _crop_sample(image, label, instances, rng, patch_size, input_size, n_obj, min_object_px, flips,
                            stored_instances, pixels)
    raise ValueError(f"unknown image_prep {image_prep!r}; expected resize or crop")


class CorpusSamples(Dataset):
    """Map-style dataset indexed by global sample position (see the module docstring); images are
    normalised with ``pixels``, the statistics of the model being trained."""

    def __init__(self, items: list[Item], store_paths: dict[str, str], settings: dict, seed: int, stream: int = 0,
                 *, pixels: PixelStats):
        if not items:
            raise CorpusError("no images with objects in this part of the corpus")
        self.items, self.store_paths, self.settings = items, dict(store_paths), settings
        self.pixels = pixels
        self.seed, self.stream = int(seed), int(stream)
        self._stores: dict[str, DatasetStore] = {}
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # positions are unbounded; one epoch is len(items)
        return len(self.items)

    def item_at(self, position: int) -> Item:
        epoch, offset = divmod(int(position), len(self.items))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.items))}
        return self.items[self._perms[epoch][offset]]

    def _store(self, name: str) -> DatasetStore:
        if name not in self._stores:
            self._stores[name] = DatasetStore(self.store_paths[name])
        return self._stores[name]

    def __getitem__(self, position: int) -> dict:
        item = self.item_at(position)
        store = self._store(item.dataset)
        if item.z is None:
            image, label = store.image(item.case_id), store.label(item.case_id)
        else:
            image = store.image_array(item.case_id)[item.z]
            label = store.label_array(item.case_id)[item.z]
        rng = np.random.default_rng([self.seed, self.stream, 1_000_003, int(position)])
        s = self.settings
        sample = make_sample(np.asarray(image), np.asarray(label), rng, patch_size=s["patch_size"],
                             input_size=s["input_size"], n_obj=s["n_obj"], min_object_px=s["min_object_px"],
                             flips=s["flips"], pixels=self.pixels, image_prep=s["image_prep"],
                             instances=store.label_kind == "instances")
        sample["position"] = int(position)
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack a batch; the number of objects is cut to the smallest count in the batch (Alg. 1)."""
    k = min(s["masks"].shape[0] for s in samples)
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "masks": torch.stack([s["masks"][:k] for s in samples]),
        "foreground": torch.stack([s["foreground"] for s in samples]),
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
