"""Images and volumes -> model inputs, and model outputs -> label maps at the original size.

Intensities are normalised per case (1st-99th percentile of the whole image or volume,
docs/fidelity.md), so a training patch and the full-case inference see the same mapping. SAM's
geometry (resize the longest side to the input size, normalise with the backbone's own pixel
statistics, pad bottom/right) comes from
``medpipe.models.transforms``; whole training images of SAM-UNETR are padded to a centred square
before the normalisation instead, as the reference's dataset transform does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.models.transforms import (
    PixelStats,
    centre_pad,
    normalize_pixels,
    pad_to_square,
    resize_image,
    resize_label,
    resized_shape,
)


def intensity_range(image: np.ndarray, lower: float = 1.0, upper: float = 99.0, max_samples: int = 1_000_000):
    """(lo, hi) percentiles of a case, from a strided subsample for large volumes."""
    flat = np.asarray(image).ravel()
    step = max(1, flat.size // max_samples)
    lo, hi = np.percentile(flat[::step].astype(np.float32), [lower, upper])
    return float(lo), float(hi)


def scale_intensity(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 255] float32, clipped; a constant case becomes 0."""
    image = np.asarray(image, dtype=np.float32)
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0


def to_sam_batch(images: torch.Tensor, size: int, pixels: PixelStats) -> torch.Tensor:
    """(N, C, H, W) 0-255 images (C = 1 or 3) -> inputs (N, 3, size, size) of a SAM with statistics ``pixels``."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return pad_to_square(normalize_pixels(resize_image(images.float(), size), pixels), size)


def whole_images_to_sam(images: list[np.ndarray], size: int, pixels: PixelStats) -> torch.Tensor:
    """Whole 2D images (C, H, W) 0-255 of any sizes -> (N, 3, size, size): longest side resized to
    ``size``, zero-padded to a centred square (0 in the 0-255 range), then normalised with ``pixels``."""
    out = []
    for image in images:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        out.append(normalize_pixels(centre_pad(resize_image(tensor, size), size), pixels))
    return torch.stack(out)


def whole_labels_to_sam(labels: list[np.ndarray], size: int) -> torch.Tensor:
    """Label maps (H, W) of any sizes -> (N, 1, size, size) int64, nearest-resized and centred like the images."""
    return torch.stack([centre_pad(resize_label(torch.from_numpy(np.asarray(label, dtype=np.int64)), size), size)
                        for label in labels])[:, None]


def labels_to_sam(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) integer label maps -> nearest-resized, zero-padded (N, size, size)."""
    return pad_to_square(resize_label(labels, size), size)


def channels_first(image: np.ndarray, ndim: int) -> np.ndarray:
    """A store image -> (C, *spatial): grey gets a channel axis, colour moves its axis first."""
    image = np.asarray(image)
    if image.ndim == ndim:
        return image[None]
    if ndim == 2 and image.ndim == 3:
        return np.moveaxis(image[..., :3], -1, 0)
    raise ValueError(f"image of shape {image.shape} is not a {ndim}D grey or colour image")


def restore_logits(logits: torch.Tensor, original_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Undo SAM's geometry: crop the padding of (N, C, size, size) logits and resize to ``original_hw``."""
    h, w = resized_shape(tuple(original_hw), size)
    cropped = logits[..., :h, :w]
    if (h, w) == tuple(original_hw):
        return cropped
    return F.interpolate(cropped.float(), size=tuple(original_hw), mode="bilinear", align_corners=False)
