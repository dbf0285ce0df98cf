"""On-disk cache of image embeddings (zarr v3), keyed by model and case (and slice).

The image encoder is >95% of SAM's inference cost; the reference evaluation recomputed it for
every iteration and every 3D grid point. Here each image (or each slice of a volume) is encoded
once per model and stored; every object, iteration, setting, seed and grid point reads it back.

Layout: ``<cache>.zarr/`` group with attrs ``{model, model_key, img_size}``; one array per case,
shape (S, C, h, w) float32 (S = 1 for 2D images, the number of slices for volumes), chunked one
slice per chunk, with attrs ``{original_size, complete}``. The 2D protocol on a volume that the 3D
evaluation does not cover stores single slices as ``<case>@z<z>`` (S = 1) instead, so slices
without objects are never encoded. An array is written under a temporary
name and renamed when complete, so a killed job never leaves a half-written embedding behind.
A cache whose ``model_key`` differs from the current model's (another checkpoint) is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

log = logging.getLogger(__name__)


class EmbeddingCacheError(RuntimeError):
    """The cache belongs to another model or holds an unusable entry."""


class EmbeddingCache:
    """Embeddings of one model for the cases of one dataset."""

    def __init__(self, path, model: str, model_key: str, img_size: int):
        self.path = Path(path)
        self.model, self.model_key, self.img_size = model, model_key, int(img_size)
        self.path.mkdir(parents=True, exist_ok=True)
        self._root = zarr.open_group(str(self.path), mode="a")
        attrs = dict(self._root.attrs)
        if not attrs:
            self._root.attrs.update({"model": model, "model_key": model_key, "img_size": self.img_size})
        elif attrs.get("model_key") != model_key or int(attrs.get("img_size", -1)) != self.img_size:
            raise EmbeddingCacheError(
                f"{self.path}: embedding cache was made by model key {attrs.get('model_key')!r} "
                f"(img_size {attrs.get('img_size')}), not by {model_key!r} (img_size {self.img_size}); "
                "delete the folder to recompute"
            )
        #: encoder passes this object triggered (the benchmark and tests read it)
        self.computed = 0

    @staticmethod
    def _name(case_id: str) -> str:
        if "/" in case_id or case_id.startswith("."):
            raise EmbeddingCacheError(f"case id {case_id!r} cannot be a cache entry name")
        return case_id

    def has(self, case_id: str) -> bool:
        name = self._name(case_id)
        if not (self.path / name).exists():
            return False
        return bool(zarr.open_array(str(self.path / name), mode="r").attrs.get("complete", False))

    def get(self, case_id: str, compute) -> tuple[np.ndarray, tuple[int, int]]:
        """``(embeddings (S, C, h, w), original_size)`` of a case; ``compute()`` runs only on a miss.

        ``compute`` returns ``(embeddings, original_size)``; it is the only place the image
        encoder runs, so a cache hit costs one read.
        """
        name = self._name(case_id)
        if self.has(case_id):
            array = zarr.open_array(str(self.path / name), mode="r")
            return array[...], tuple(array.attrs["original_size"])
        embeddings, original_size = compute()
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.computed += len(embeddings)
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        array = zarr.create_array(
            str(tmp), shape=embeddings.shape, dtype="float32", chunks=(1, *embeddings.shape[1:])
        )
        array[...] = embeddings
        array.attrs.update({"original_size": [int(s) for s in original_size], "complete": True})
        final = self.path / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.debug("cached embeddings of %s (%d slices) in %s", case_id, len(embeddings), self.path)
        return embeddings, tuple(int(s) for s in original_size)

    def open_entry(self, case_id: str) -> zarr.Array:
        """A complete entry as a lazy array: index it to read single slices, not the whole volume."""
        if not self.has(case_id):
            raise EmbeddingCacheError(f"{self.path}: no complete entry for {case_id!r}")
        return zarr.open_array(str(self.path / self._name(case_id)), mode="r")


def slice_entry(case_id: str, z: int) -> str:
    """The cache entry (and result-table image id) of slice ``z`` of a volume."""
    return f"{case_id}@z{z:04d}"


def case_embeddings(cache: EmbeddingCache, predictor, store, case_id: str) -> tuple[np.ndarray, tuple[int, int]]:
    """``(embeddings (S, C, h, w), original_size)`` of a whole case, encoded only on a cache miss."""
    from medpipe.interactive.predictor import image_to_uint8_slices

    def compute():
        slices = image_to_uint8_slices(store.image(case_id), store.ndim)
        return predictor.encode(slices), tuple(store.label_array(case_id).shape[-2:])

    return cache.get(case_id, compute)


def slice_embeddings(cache: EmbeddingCache, predictor, store, case_id: str, slices):
    """Yield ``(z, embedding (C, h, w))`` for the given slices of a volume (2D protocol on 3D data).

    A whole-volume entry (made for the 3D evaluation) is read slice by slice; otherwise each slice
    gets its own entry. Either way a slice is normalised with its whole volume's intensity range,
    so both hold the same numbers, and the volume is read at most once.
    """
    from medpipe.interactive.predictor import image_to_uint8_slices

    whole = cache.open_entry(case_id) if cache.has(case_id) else None
    volume = None
    for z in slices:
        if whole is not None:
            yield z, whole[z]
            continue

        def compute(z=z):
            nonlocal volume
            if volume is None:
                volume = image_to_uint8_slices(store.image(case_id), 3)
            return predictor.encode(volume[z : z + 1]), volume.shape[1:3]

        yield z, cache.get(slice_entry(case_id, z), compute)[0][0]
