"""On-disk cache of image embeddings (zarr v3), keyed by model, case (and slice) and the input encoded.

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
embedding behind. Every chunk carries a crc32c checksum and every entry the name it was made for
and a digest of its input (:func:`input_digest`): a damaged chunk, an entry of a store that has
changed since, or an entry moved under another case's name is encoded again, with a warning. A
cache made by another model (``model_key``: another checkpoint), input size or
``interactive.preprocess`` is refused, never reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from medpipe.errors import MedpipeError
from medpipe.store import chunk_compressors

log = logging.getLogger(__name__)


class EmbeddingCacheError(MedpipeError, RuntimeError):
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

    def has(self, case_id: str, input_digest: str | None = None) -> bool:
        """A complete entry of ``case_id`` made from the input ``input_digest`` (when given) is here.

        An entry made from other input (the store changed under the same case id) or moved under
        another name (two case folders swapped) is not: it is logged and then recomputed.
        """
        name = self._name(case_id)
        if not (self.path / name).exists():
            return False
        try:
            attrs = zarr.open_array(str(self.path / name), mode="r").attrs
            complete, made_for, made_from = attrs.get("complete", False), attrs.get("entry"), attrs.get("input")
        except (OSError, ValueError, KeyError) as exc:  # unreadable metadata: a damaged entry
            log.warning("%s: damaged embedding entry (%s); encoding again", self.path / name, exc)
            return False
        if complete and input_digest is not None and (made_for, made_from) != (name, input_digest):
            log.warning("%s: embedding entry made for %r from input %s, not for %r from %s (a changed store or a "
                        "moved entry); encoding again", self.path / name, made_for, made_from, name, input_digest)
            return False
        return bool(complete)

    def get(self, case_id: str, compute, input_digest: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """``(embeddings (S, C, h, w), original_size)`` of a case; ``compute()`` runs only on a miss.

        ``compute`` returns ``(embeddings, original_size)``; it is the only place the image
        encoder runs, so a cache hit costs one read. ``input_digest`` (:func:`input_digest`) names
        what is encoded: an entry made from anything else is encoded again, and so is an entry with
        a chunk that fails its checksum (a warning names it).
        """
        name = self._name(case_id)
        if self.has(case_id, input_digest):
            array = zarr.open_array(str(self.path / name), mode="r")
            try:
                return array[...], tuple(array.attrs["original_size"])
            except ValueError as exc:  # a chunk fails its crc32c: the cache is damaged, not the study
                log.warning("%s: damaged embedding entry (%s); encoding again", self.path / name, exc)
        embeddings, original_size = compute()
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.computed += len(embeddings)
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        array = zarr.create_array(
            str(tmp), shape=embeddings.shape, dtype="float32", chunks=(1, *embeddings.shape[1:]),
            compressors=chunk_compressors(),
        )
        array[...] = embeddings
        array.attrs.update({"original_size": [int(s) for s in original_size], "entry": name, "input": input_digest,
                            "complete": True})
        final = self.path / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        log.debug("cached embeddings of %s (%d slices) in %s", case_id, len(embeddings), self.path)
        return embeddings, tuple(int(s) for s in original_size)

    def open_entry(self, case_id: str, input_digest: str | None = None) -> zarr.Array:
        """A complete entry as a lazy array: index it to read single slices, not the whole volume."""
        if not self.has(case_id, input_digest):
            raise EmbeddingCacheError(f"{self.path}: no complete entry for {case_id!r}")
        return zarr.open_array(str(self.path / self._name(case_id)), mode="r")


def slice_entry(case_id: str, z: int) -> str:
    """The cache entry (and result-table image id) of slice ``z`` of a volume."""
    return f"{case_id}@z{z:04d}"


def input_digest(store, case_id: str, z: int | None = None) -> str:
    """What an entry encodes: the store's record of the case (the sha256 of its source files, its
    shape, dtype and spacing) and the slice. Cheap (no pixel is read), and different whenever the
    store holds another image under the same case id."""
    record = json.dumps({"dataset": store.name, "case": dict(store.info(case_id).attrs), "z": z}, sort_keys=True,
                        default=str)
    return hashlib.sha256(record.encode()).hexdigest()[:32]


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

    return cache.get(case_id, compute, input_digest(store, case_id))


def slice_embeddings(cache: EmbeddingCache, predictor, store, case_id: str, slices):
    """Yield ``(z, embedding (C, h, w), original_size)`` for the given slices of a volume (2D protocol).

    ``preprocess: aspect``: a slice is normalised with its whole volume's intensity range, so a
    whole-volume entry (made for the 3D evaluation) holds the same numbers and is read slice by
    slice when present. ``reference``: each slice is a 2D image of its own (min-max of the slice,
    resized to 1024 x 1024) with an entry of its own. Either way the volume is read at most once.
    """
    from medpipe.interactive import preprocess

    digest = input_digest(store, case_id)
    whole = cache.open_entry(case_id, digest) if cache.preprocess == "aspect" and cache.has(case_id, digest) else None
    volume = None
    for z in slices:
        if whole is not None:
            try:
                embedding = whole[z]
            except ValueError as exc:  # a chunk fails its checksum: this slice (and the rest) encoded anew
                log.warning("%s: damaged embedding entry (%s); encoding again", cache.path / case_id, exc)
                whole = None
            else:
                yield z, embedding, tuple(whole.attrs["original_size"])
                continue

        def compute(z=z):
            nonlocal volume
            if volume is None:
                volume = store.image(case_id)
                if cache.preprocess == "aspect":
                    volume = preprocess.volume(volume, "aspect")
            image = volume[z] if cache.preprocess == "aspect" else preprocess.image_2d(volume[z], cache.preprocess)
            return predictor.encode(image[None]), image.shape[:2]

        embedding, original_size = cache.get(slice_entry(case_id, z), compute, input_digest(store, case_id, z))
        yield z, embedding[0], original_size
