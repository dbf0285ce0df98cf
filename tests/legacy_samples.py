"""Today's sample path before issue 18 (the lean loader), kept verbatim to test that the new path
makes the same samples: same item list, same position -> same image, masks and foreground, the
image within the uint8 rounding of the handed-over frame.

Copied from src/medpipe/finetune/data.py as of commit acbd845 (functions unchanged, only the
module-level glue below is new).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from medpipe.finetune.data import (
    CorpusError,
    Item,
    _as_tensor,
    _crop_window,
    _flip,
    corpus_cases,
    objects_of,
)
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
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)


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


def legacy_sample_at(items, store_paths, settings, seed, stream, position, pixels):
    """``CorpusSamples.__getitem__`` of today (items: the list :func:`build_items` returns)."""
    epoch, offset = divmod(int(position), len(items))
    item = items[np.random.default_rng([seed, stream, epoch]).permutation(len(items))[offset]]
    store = DatasetStore(store_paths[item.dataset])
    if item.z is None:
        image, label = store.image(item.case_id), store.label(item.case_id)
    else:
        image = store.image_array(item.case_id)[item.z]
        label = store.label_array(item.case_id)[item.z]
    rng = np.random.default_rng([seed, stream, 1_000_003, int(position)])
    s = settings
    sample = make_sample(np.asarray(image), np.asarray(label), rng, patch_size=s["patch_size"],
                         input_size=s["input_size"], n_obj=s["n_obj"], min_object_px=s["min_object_px"],
                         flips=s["flips"], pixels=pixels, image_prep=s["image_prep"],
                         instances=store.label_kind == "instances")
    sample["position"] = int(position)
    return sample
