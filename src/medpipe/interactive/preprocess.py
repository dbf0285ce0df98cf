"""What the interactive evaluation feeds the model: intensities and geometry (``interactive.preprocess``).

``reference`` (default) reproduces the data the paper's numbers were computed on (docs/fidelity.md):

- 2D images (and, in the 2D protocol, each slice of a volume): image and label resized to
  1024 x 1024 *ignoring the aspect ratio* (``skimage.transform.resize``: images order 1 with its
  anti-aliasing, cast back to the source dtype; labels nearest), then min-max normalised per image
  (per channel for colour) and x255 (medico-sam ``preprocess_datasets.resize_inputs``), then
  brought to uint8 by micro-sam's ``_to_image`` of the paper's era (global min-max, floor);
- volumes (3D protocol): whole-volume min-max x255 only when the maximum exceeds 255, then uint8
  (medico-sam ``data_utils._load_raw_and_label_volumes``; values below 0 become 0 here, where the
  reference's cast wraps them).

``aspect`` keeps each image's own geometry (SAM resizes the longest side and pads) and maps the
1st-99th percentile of the image or whole volume to 0-255, as the finetuning does.

Either way the result is uint8 with three channels; labels come back in the same frame, so objects,
prompts and Dice are computed where the model sees the image.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from medpipe.models.transforms import percentile_normalize, to_three_channels

PREPROCESS = ("reference", "aspect")
#: the reference evaluation resizes every 2D image to this square size
REFERENCE_SIZE = 1024


def _check(mode: str) -> None:
    if mode not in PREPROCESS:
        raise ValueError(f"unknown interactive.preprocess {mode!r}; expected one of {PREPROCESS}")


def _reference_uint8(image: np.ndarray) -> np.ndarray:
    """medico-sam's min-max x255 (per channel), then micro-sam's (<= 1.7) float -> uint8 step."""
    x = image.astype(np.float32)
    axis = (0, 1) if x.ndim == 3 else None
    x -= x.min(axis=axis, keepdims=True)
    x /= x.max(axis=axis, keepdims=True) + np.float32(1e-7)
    x *= np.float32(255)
    x -= x.min()  # micro-sam _to_image: global min-max of a float image, x255, floor
    top = x.max()
    if top > 0:
        x /= top
    return to_three_channels((x * np.float32(255)).astype(np.uint8))


def image_2d(image: np.ndarray, mode: str) -> np.ndarray:
    """A 2D image (H, W) or (H, W, C) as the (H', W', 3) uint8 image the model sees."""
    _check(mode)
    image = np.asarray(image)
    if mode == "aspect":
        return np.round(percentile_normalize(to_three_channels(image))).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] in (1, 4):
        image = image[..., 0] if image.shape[-1] == 1 else image[..., :3]
    resized = resize(image, (REFERENCE_SIZE, REFERENCE_SIZE), preserve_range=True).astype(image.dtype)
    return _reference_uint8(resized)


def label_2d(label: np.ndarray, mode: str) -> np.ndarray:
    """A 2D label map in the frame of ``image_2d`` (nearest neighbour: class ids are kept)."""
    _check(mode)
    label = np.asarray(label)
    if mode == "aspect":
        return label
    size = (REFERENCE_SIZE, REFERENCE_SIZE)
    return resize(label, size, order=0, anti_aliasing=False, preserve_range=True).astype(label.dtype)


def volume(image: np.ndarray, mode: str) -> np.ndarray:
    """A volume (Z, H, W) as (Z, H, W, 3) uint8 slices for the 3D protocol (one range for all slices)."""
    _check(mode)
    image = np.asarray(image)
    if mode == "aspect":
        scaled = np.round(percentile_normalize(image)).astype(np.uint8)
    else:
        x = image.astype(np.float32)
        if x.max() > 255:
            x -= x.min()
            x /= x.max() + np.float32(1e-7)
            x *= np.float32(255)
        scaled = np.clip(x, 0, 255).astype(np.uint8)
    return np.stack([to_three_channels(s) for s in scaled])
