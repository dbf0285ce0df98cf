"""What every synthetic modality provides, so the dataset writer can treat them alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One generated case: the image in its file dtype, the semantic label map (uint8, 0 =
    background) of the same spatial shape, and the voxel spacing in mm (array axis order)."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]


@dataclass(frozen=True)
class KindSpec:
    """A modality kind: file layout plus two generator functions.

    ``sample_patient(rng, size)`` draws a patient's anatomy (a dict), ``render(anatomy, rng, size)``
    draws one image of that patient. Splitting the two is what makes images of one patient alike
    while patients differ.
    """

    name: str
    ndim: int
    classes: dict[int, str]
    image_ext: str
    label_ext: str
    default_size: tuple[int, ...]
    min_size: tuple[int, ...]
    sample_patient: Callable[[np.random.Generator, tuple[int, ...]], dict]
    render: Callable[[dict, np.random.Generator, tuple[int, ...]], Sample]

    def image_name(self, case: str) -> str:
        """nnU-Net style: volumes carry the channel suffix ``_0000``, 2D images do not."""
        return f"{case}_0000{self.image_ext}" if self.ndim == 3 else f"{case}{self.image_ext}"

    def label_name(self, case: str) -> str:
        return f"{case}{self.label_ext}"
