"""On-disk cache of image embeddings (zarr v3), keyed by model and case (and slice).

The image encoder is >95% of SAM's inference cost; the reference evaluation recomputed it for
every iteration and every 3D grid point. Here each image (or each slice of a volume) is encoded
once per model and stored; every object, iteration, setting, seed and grid point reads it back.

Layout: ``<cache>.zarr/`` group with attrs ``{model, model_key, img_size, preprocess}``; one array per case,
shape (S, C, h, w) float32 (S = 1 for 2D images, the number of slices for volumes), chunked one
slice per chunk, with attrs ``{original_size, complete}``. The 2D protocol on a volume that the 3D
evaluation does not cover stores single slices as ``<case>@z<z>`` (S = 1) instead, so slices
without objects are never encoded (with ``preprocess: reference`` a slice is always an entry of its
own: it is resized and normalised as a 2D image, not as part of the volume). An array is written
under a temporary name and renamed when complete, so a killed job never leaves a half-written
embedding behind. A cache made by another model (``model_key``: another checkpoint), input size or
``interactive.preprocess`` is refused, never reused.
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

    def __init__(self, path, model: str, model_key: str, img_size: int, preprocess: str = "reference"):
        self.path = Path(path)
        self.model, self.model_key, self.img_size = model, model_key, int(img_size)
        self.preprocess = preprocess
        self.path.mkdir(parents=True, exist_ok=True)
        self._root = zarr.open_group(str(self.path), mode="a")
        attrs = dict(self._root.attrs)
        wanted = {"model_key": model_key, "img_size": self.img_size, "preprocess": preprocess}
        if not attrs:
            self._root.attrs.update({"model": model, **wanted})
        elif {key: attrs.get(key) for key in wanted} != wanted:
            made = {key: attrs.get(key) for key in wanted}
            raise EmbeddingCacheError(
                f"{self.path}: embedding cache was made with {made}, not with {wanted}; "
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
    """``(embeddings (S, C, h, w), original_size)`` of a whole case, encoded only on a cache miss.

    A 2D image is preprocessed as a 2D image (``original_size`` is then the evaluation frame, e.g.
    1024 x 1024 with ``preprocess: reference``); a volume as a volume (its own size).
    """
    from medpipe.interactive import preprocess

    def compute():
        if store.ndim == 2:
            slices = preprocess.image_2d(store.image(case_id), cache.preprocess)[None]
        else:
            slices = preprocess.volume(store.image(case_id), cache.preprocess)
        return predictor.encode(slices), tuple(slices.shape[1:3])

    return cache.get(case_id, compute)


def slice_embeddings(cache: EmbeddingCache, predictor, store, case_id: str, slices):
    """Yield ``(z, embedding (C, h, w), original_size)`` for the given slices of a volume (2D protocol).

    ``preprocess: aspect``: a slice is normalised with its whole volume's intensity range, so a
    whole-volume entry (made for the 3D evaluation) holds the same numbers and is read slice by
    slice when present. ``reference``: each slice is a 2D image of its own (min-max of the slice,
    resized to 1024 x 1024) with an entry of its own. Either way the volume is read at most once.
    """
    from medpipe.interactive import preprocess

    whole = cache.open_entry(case_id) if cache.preprocess == "aspect" and cache.has(case_id) else None
    volume = None
    for z in slices:
        if whole is not None:
            yield z, whole[z], tuple(whole.attrs["original_size"])
            continue

        def compute(z=z):
            nonlocal volume
            if volume is None:
                volume = store.image(case_id)
                if cache.preprocess == "aspect":
                    volume = preprocess.volume(volume, "aspect")
            image = volume[z] if cache.preprocess == "aspect" else preprocess.image_2d(volume[z], cache.preprocess)
            return predictor.encode(image[None]), image.shape[:2]

        embedding, original_size = cache.get(slice_entry(case_id, z), compute)
        yield z, embedding[0], original_size
