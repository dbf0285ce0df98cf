"""Image embeddings of a frozen image encoder, computed once per distinct input and reused.

With ``freeze: [image_encoder]`` the encoder never changes, so the embedding of a training image is
a function of the image alone. Entries are *content-addressed*: the name of an entry is the SHA-256
of the encoder's digest (its weights and pixel statistics, :func:`medpipe.models.sam.encoder_digest`)
and the exact bytes of the input tensor. An entry can therefore never be stale or belong to another
model or preprocessing, and every run on the same frozen encoder (the presets of the demo, which
start from one base model) can share one folder: whichever run meets an image first encodes it.

Every input is encoded on its own (a batch of one) in eval mode without gradients, whether the
entry is then stored or not, so a run gives the same numbers with the cache, without it, and after
a resume that finds entries written by another run. Entries are ``.emb`` files written atomically:
a magic line, the SHA-256 of the entry's name and payload, then the float32 ``.npy`` payload; once
the folder holds ``max_bytes``, new embeddings are used but not stored.

The cache is optional and is never trusted: an entry whose digest does not match (flipped bits, a
cut or zero-byte file, two entries swapped), whose shape differs from the encoder's, or that
cannot be read is logged by name, encoded again and replaced. A cache that cannot be written
(read-only, disk full) is logged once and no longer written; the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch

from medpipe.errors import MedpipeError
from medpipe.files import atomic_path

log = logging.getLogger(__name__)

MAGIC = b"medpipe-embedding-v1\n"
SUFFIX = ".emb"


class DamagedEntry(MedpipeError, ValueError):
    """A cache entry whose bytes are not what was written under its name."""


def pack_entry(name: str, array: np.ndarray) -> bytes:
    """An entry's bytes: magic, SHA-256 of (name, payload), payload (``.npy`` of ``array``)."""
    payload = io.BytesIO()
    np.save(payload, array, allow_pickle=False)
    payload = payload.getvalue()
    return MAGIC + hashlib.sha256(name.encode() + payload).digest() + payload


def unpack_entry(name: str, data: bytes) -> np.ndarray:
    """The array of an entry read back, or :class:`DamagedEntry` saying what is wrong with it."""
    head = len(MAGIC) + 32
    if len(data) < head or not data.startswith(MAGIC):
        raise DamagedEntry(f"not an embedding entry ({len(data)} bytes)")
    if hashlib.sha256(name.encode() + data[head:]).digest() != data[len(MAGIC):head]:
        raise DamagedEntry("its digest does not match its name and payload (damaged, or another entry's file)")
    return np.load(io.BytesIO(data[head:]), allow_pickle=False)


class FrozenEncoder:
    """Embeddings (B, C, h, w) of a frozen image encoder, read from ``folder`` when known there."""

    def __init__(self, encoder: torch.nn.Module, digest: str, folder=None, max_bytes: float = 0):
        self.encoder, self.digest = encoder, digest
        self.folder = Path(folder) / digest[:16] if folder is not None and max_bytes > 0 else None
        self.max_bytes = float(max_bytes)
        self.hits = self.misses = 0
        self.full = False  # the folder reached max_bytes (or cannot be written): new embeddings are not stored
        self._shape = None  # an embedding's shape, once one was computed
        self._used = None

    def _entry(self, image: torch.Tensor) -> Path:
        data = image.detach().to("cpu", torch.float32).contiguous()
        name = hashlib.sha256(self.digest.encode() + str(tuple(data.shape)).encode() + data.numpy().tobytes())
        name = name.hexdigest()
        return self.folder / name[:2] / f"{name}{SUFFIX}"

    def _room(self, size: int) -> bool:
        if self._used is None:  # counted once per process; other writers may add to it meanwhile
            self._used = sum(p.stat().st_size for p in self.folder.rglob(f"*{SUFFIX}")) if self.folder.exists() else 0
        if self._used + size > self.max_bytes:
            self.full = True
            return False
        self._used += size
        return True

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images:
            path = self._entry(image) if self.folder is not None else None
            cached = self._read(path) if path is not None and path.is_file() else None
            if cached is not None:
                out.append(torch.from_numpy(cached).to(images.device))
                self.hits += 1
                continue
            embedding = self.encoder(image[None])[0].float()
            self.misses += 1
            self._shape = tuple(embedding.shape)
            out.append(embedding)
            array = embedding.cpu().numpy()
            if path is not None and not self.full and self._room(array.nbytes):
                self._write(path, array)
        return torch.stack(out)

    def _read(self, path: Path) -> np.ndarray | None:
        """The entry at ``path``, or None (with a warning naming it) when it is damaged or unreadable."""
        try:
            array = unpack_entry(path.stem, path.read_bytes())
            if self._shape not in (None, array.shape) or array.dtype != np.float32:
                raise DamagedEntry(f"shape {array.shape} {array.dtype}, not {self._shape} float32")
            return array
        except (OSError, ValueError) as exc:  # a damaged entry is recomputed (and replaced)
            log.warning("%s: damaged cached embedding (%s); encoding again", path, exc)
            return None

    def _write(self, path: Path, array: np.ndarray) -> None:
        """Store an entry; a cache that cannot be written (read-only, full) is given up, not the run."""
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(pack_entry(path.stem, array))
        except OSError as exc:
            log.warning("%s: cannot write to the embedding cache (%s); going on without storing embeddings",
                        path, exc.strerror or exc)
            self.full = True
