"""Images and volumes -> model inputs, and model outputs -> label maps at the original size.

Intensities are normalised per case (1st-99th percentile of the whole image or volume, SPEC 3.2),
so a training patch and the full-case inference see the same mapping.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.sam.preprocess import (
    normalize_pixels,
    pad_to_square,
    resize_image,
    resize_label,
    resized_shape,
    to_three_channels,
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


def slice_to_sam(image_0_255: np.ndarray, size: int) -> torch.Tensor:
    """One (Y, X) or (Y, X, C) 0-255 image -> SAM input (3, size, size): resize longest side, normalise, pad."""
    rgb = torch.from_numpy(np.ascontiguousarray(to_three_channels(image_0_255), dtype=np.float32)).permute(2, 0, 1)
    return pad_to_square(normalize_pixels(resize_image(rgb, size)), size)


def label_to_sam(label: np.ndarray, size: int) -> torch.Tensor:
    """A (Y, X) or (D, Y, X) label map -> nearest-resized, zero-padded (…, size, size) int64."""
    tensor = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
    return pad_to_square(resize_label(tensor, size), size)


def to_sam_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) 0-255 images (C = 1 or 3) -> SAM inputs (N, 3, size, size)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    return pad_to_square(normalize_pixels(resize_image(images.float(), size)), size)


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


def volume_to_sam(volume_0_255: np.ndarray, size: int) -> torch.Tensor:
    """(D, Y, X) 0-255 volume -> (3, D, size, size): every slice through :func:`slice_to_sam`."""
    return torch.stack([slice_to_sam(s, size) for s in volume_0_255], dim=1)


def restore_logits(logits: torch.Tensor, original_hw: tuple[int, int], size: int) -> torch.Tensor:
    """Undo SAM's geometry: crop the padding of (N, C, size, size) logits and resize to ``original_hw``."""
    h, w = resized_shape(tuple(original_hw), size)
    cropped = logits[..., :h, :w]
    if (h, w) == tuple(original_hw):
        return cropped
    return F.interpolate(cropped.float(), size=tuple(original_hw), mode="bilinear", align_corners=False)


def pad_to_multiple(array: np.ndarray, multiple: int, axes) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad ``axes`` of ``array`` up to multiples of ``multiple`` (Swin UNETR needs 32).

    Returns the padded array and the slices that cut the original back out.
    """
    pads = [(0, 0)] * array.ndim
    crop = [slice(None)] * array.ndim
    for axis in axes:
        n = array.shape[axis]
        pads[axis] = (0, (-n) % multiple)
        crop[axis] = slice(0, n)
    return np.pad(array, pads), tuple(crop)
