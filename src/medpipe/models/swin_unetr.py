"""Swin UNETR baseline (MONAI), 2D or 3D (docs/fidelity.md).

MONAI's current ``SwinUNETR`` has no ``img_size`` argument: it accepts any input whose spatial
dims are multiples of 32 (five x2 downsamplings), so patches and whole cases are zero-padded to
multiples of 32 and the padding is cut from the output. Each side must also be at least 64: at 32
the bottleneck is 1 voxel, where instance normalisation is undefined. Inference is MONAI's sliding window.
"""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SwinUNETR

MULTIPLE = 32
MIN_SIDE = 64


def build_swin_unetr(in_channels: int, n_classes: int, spatial_dims: int, feature_size: int = 48) -> SwinUNETR:
    """Swin UNETR; ``feature_size`` must be divisible by 12 (MONAI's head counts 3, 6, 12, 24)."""
    if feature_size % 12:
        raise ValueError(f"swin_unetr.feature_size must be divisible by 12, got {feature_size}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return SwinUNETR(in_channels=in_channels, out_channels=n_classes, feature_size=feature_size,
                     spatial_dims=spatial_dims)


def padded_size(size: int, multiple: int = MULTIPLE) -> int:
    """The smallest valid Swin UNETR side >= ``size``: a multiple of 32, at least 64."""
    return max(MIN_SIDE, size + (-size) % multiple)


def check_patch(patch) -> tuple[int, ...]:
    """A training/inference window must have valid sides (errors name the offending size)."""
    patch = tuple(int(p) for p in patch)
    bad = [p for p in patch if p != padded_size(p)]
    if bad:
        raise ValueError(f"swin_unetr patch {patch}: every side must be a multiple of 32 and >= 64")
    return patch


def sliding_window_logits(model, image: torch.Tensor, roi: tuple[int, ...], batch_size: int = 1,
                          overlap: float = 0.25) -> torch.Tensor:
    """Logits of a (1, C, *spatial) image of any size: pad to multiples of 32, slide, crop back."""
    spatial = image.shape[2:]
    roi = check_patch(roi)
    pads = []
    for n in reversed(spatial):
        pads += [0, padded_size(n) - n]
    padded = torch.nn.functional.pad(image, pads)
    logits = sliding_window_inference(padded, roi, batch_size, model, overlap=overlap, mode="gaussian")
    return logits[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
