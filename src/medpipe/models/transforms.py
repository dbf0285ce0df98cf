"""Turn a medical image into SAM's input, as in the reference pipeline (docs/fidelity.md).

Intensities: 1st-99th percentile of the sample -> [0, 1], clipped, x255; grey repeated to three
channels. Geometry: SAM's own transform, i.e. resize the longest side to the model's input size,
normalise with the *model's* pixel mean/std (``Sam.pixel_mean`` / ``pixel_std``: SAM's ImageNet
statistics for SAM, 0 / 255 for LiteMedSAM, which takes [0, 1] images) and pad bottom/right with
zeros to a square. Every caller passes the statistics of the model it feeds (:func:`pixel_stats`);
there is no default, so a stage cannot silently give one model another's normalisation. Datasets
that feed whole images at a fixed size (the reference's training images) resize the longest side
and pad to a centred square instead (``centre_pad``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

#: SAM's pixel statistics (ImageNet's, on 0-255 images), what ``segment_anything``'s builders set
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class PixelStats(NamedTuple):
    """A model's per-channel input normalisation ``(x - mean) / std`` of a 0-255 image."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SAM_PIXELS = PixelStats(PIXEL_MEAN, PIXEL_STD)


def pixel_stats(sam) -> PixelStats:
    """The pixel statistics a ``segment_anything.Sam`` normalises its inputs with (its ``preprocess``)."""
    return PixelStats(tuple(float(v) for v in sam.pixel_mean.flatten().tolist()),
                      tuple(float(v) for v in sam.pixel_std.flatten().tolist()))


def percentile_normalize(image, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """Map the sample's [p_lower, p_upper] intensity range to [0, 255] (float32), clipped.

    All channels share one range so colours keep their balance; a constant image becomes 0.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [lower, upper])
    if hi <= lo:
        return np.zeros_like(image)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.float32)


def to_three_channels(image) -> np.ndarray:
    """(H, W) or (H, W, 1) -> (H, W, 3) by repetition; (H, W, 3) unchanged; RGBA drops alpha."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected a 2D image (H, W) or (H, W, C), got shape {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    if image.shape[-1] in (3, 4):
        return image[..., :3]
    raise ValueError(f"expected 1, 3 or 4 channels, got {image.shape[-1]}")


def to_sam_uint8(image) -> np.ndarray:
    """A 2D image as the (H, W, 3) uint8 array ``SamPredictor.set_image`` expects."""
    return np.round(percentile_normalize(to_three_channels(image))).astype(np.uint8)


def resized_shape(shape: tuple[int, int], target: int) -> tuple[int, int]:
    """SAM's rule for the size after resizing the longest side to ``target``."""
    return ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], target)


def resize_image(image: torch.Tensor, target: int) -> torch.Tensor:
    """Resize (C, H, W) or (N, C, H, W) float images so the longest side is ``target`` (bilinear)."""
    squeeze = image.dim() == 3
    batch = image[None] if squeeze else image
    out = F.interpolate(batch.float(), resized_shape(batch.shape[-2:], target), mode="bilinear",
                        align_corners=False, antialias=True)
    return out[0] if squeeze else out


def resize_label(label: torch.Tensor, target: int) -> torch.Tensor:
    """Resize an integer label map (H, W) or masks (N, H, W) with nearest neighbour, keeping ids."""
    squeeze = label.dim() == 2
    batch = (label[None] if squeeze else label)[:, None].float()
    out = F.interpolate(batch, resized_shape(batch.shape[-2:], target), mode="nearest-exact")[:, 0]
    out = out.to(label.dtype)
    return out[0] if squeeze else out


def centre_pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dims to ``size`` x ``size`` with the image in the centre.

    An odd padding puts the extra pixel before the image (top/left), as torch-em's
    ``ResizeLongestSideInputs`` does (``ceil`` before, ``floor`` after).
    """
    h, w = tensor.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"centre_pad: {h}x{w} does not fit in {size}x{size}")
    top, left = -(-(size - h) // 2), -(-(size - w) // 2)
    return F.pad(tensor, (left, size - w - left, top, size - h - top))


def pad_to_square(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dims at the bottom/right to ``size`` x ``size`` (SAM's padding)."""
    h, w = tensor.shape[-2:]
    return F.pad(tensor, (0, size - w, 0, size - h))


def normalize_pixels(image: torch.Tensor, stats: PixelStats) -> torch.Tensor:
    """A model's pixel normalisation (``stats``: :func:`pixel_stats` of it) of a (..., 3, H, W) 0-255 image."""
    mean = torch.tensor(stats.mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(stats.std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def sam_input(image_hw3: np.ndarray, img_size: int, stats: PixelStats) -> torch.Tensor:
    """A (H, W, 3) 0-255 image -> the (3, img_size, img_size) tensor the image encoder of a model with
    pixel statistics ``stats`` takes (what ``SamPredictor.set_image`` builds)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image_hw3, dtype=np.float32)).permute(2, 0, 1)
    return pad_to_square(normalize_pixels(resize_image(tensor, img_size), stats), img_size)
