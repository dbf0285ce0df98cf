"""Image embeddings of a frozen image encoder, computed once per distinct input and reused.

With ``freeze: [image_encoder]`` the encoder never changes, so the embedding of a training image is
a function of the image alone. Entries are *content-addressed*: the name of an entry is the SHA-256
of the encoder's digest (its weights and pixel statistics, :func:`medpipe.models.sam.encoder_digest`)
and the exact bytes of the input tensor. An entry can therefore never be stale or belong to another
model or preprocessing, and every run on the same frozen encoder (the presets of the demo, which
start from one base model) can share one folder: whichever run meets an image first encodes it.

Every input is encoded on its own (a batch of one) in eval mode without gradients, whether the
entry is then stored or not, so a run gives the same numbers with the cache, without it, and after
a resume that finds entries written by another run. Entries are ``.npy`` float32 files written
atomically; once the folder holds ``max_bytes``, new embeddings are used but not stored.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from medpipe.files import atomic_path

log = logging.getLogger(__name__)


class FrozenEncoder:
    """Embeddings (B, C, h, w) of a frozen image encoder, read from ``folder`` when known there."""

    def __init__(self, encoder: torch.nn.Module, digest: str, folder=None, max_bytes: float = 0):
        self.encoder, self.digest = encoder, digest
        self.folder = Path(folder) / digest[:16] if folder is not None and max_bytes > 0 else None
        self.max_bytes = float(max_bytes)
        self.hits = self.misses = 0
        self.full = False  # the folder reached max_bytes: new embeddings are no longer stored
        self._used = None

    def _entry(self, image: torch.Tensor) -> Path:
        data = image.detach().to("cpu", torch.float32).contiguous()
        name = hashlib.sha256(self.digest.encode() + str(tuple(data.shape)).encode() + data.numpy().tobytes())
        name = name.hexdigest()
        return self.folder / name[:2] / f"{name}.npy"

    def _room(self, size: int) -> bool:
        if self._used is None:  # counted once per process; other writers may add to it meanwhile
            self._used = sum(p.stat().st_size for p in self.folder.rglob("*.npy")) if self.folder.exists() else 0
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
            if path is not None and path.is_file():
                try:
                    out.append(torch.from_numpy(np.load(path, allow_pickle=False)).to(images.device))
                    self.hits += 1
                    continue
                except (OSError, ValueError) as exc:  # a damaged entry is recomputed (and replaced)
                    log.warning("%s: unreadable cached embedding (%s); encoding again", path, exc)
            embedding = self.encoder(image[None])[0].float()
            self.misses += 1
            out.append(embedding)
            array = embedding.cpu().numpy()
            if path is not None and self._room(array.nbytes):
                with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
        return torch.stack(out)
