"""Chest X-ray-like images: 16-bit grey PNG; classes 1 lung (two instances), 2 heart, 3 nodule.

The heart overlaps the left lung field, so heart and lung touch; nodules sit inside the lungs and
range from a few pixels (below the size filter, sometimes) to a few dozen pixels across.
Attenuation is bright (bone, heart), aerated lung is dark, as on a radiograph.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import KindSpec, Sample
from .shapes import (
    ellipse2d,
    keep_largest,
    place,
    random_point,
    small_object_proposer,
    small_object_sizes,
    smooth_field,
)

LUNG, HEART, NODULE = 1, 2, 3


def sample_patient(rng: np.random.Generator, size: tuple[int, ...]) -> dict:
    """Body habitus, lung and heart geometry, exposure: fixed for all images of the patient."""
    return {
        "scale": rng.uniform(0.9, 1.05),
        "offset": rng.uniform(-0.03, 0.03, 2),
        "lung_width": rng.uniform(0.12, 0.145),
        "lung_tilt": rng.uniform(0.0, 0.12),
        "heart": rng.uniform(0.9, 1.12),
        "exposure": rng.uniform(0.85, 1.15),
        "n_ribs": int(rng.integers(5, 8)),
    }


def _anatomy(p: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Label map with lungs and heart at the patient's position plus a small per-image shift."""
    h, w = shape
    s = p["scale"]
    cy = h * (0.5 + p["offset"][0]) + rng.normal(0, 0.01 * h)
    cx = w * (0.5 + p["offset"][1]) + rng.normal(0, 0.01 * w)
    heart = ellipse2d(
        shape,
        (cy + 0.13 * h * s, cx + 0.085 * w * s),
        (0.14 * h * s * p["heart"], 0.15 * w * s * p["heart"]),
        angle=0.35,
    )
    label = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        lung = ellipse2d(
            shape,
            (cy - 0.02 * h * s, cx + side * 0.2 * w * s),
            (0.3 * h * s, p["lung_width"] * w * s),
            angle=-side * p["lung_tilt"],
        )
        label[keep_largest(lung & ~heart)] = LUNG
    label[heart] = HEART
    return label


def _nodules(label: np.ndarray, rng: np.random.Generator) -> None:
    """Paint 2-4 nodules inside the lungs: one of regular size, one tiny, sometimes one below
    the size filter, all kept apart from each other and from the heart."""
    h = label.shape[0]
    lung = label == LUNG
    inner = ndimage.binary_erosion(lung, iterations=2)
    taken = label == HEART
    big_r = (max(3.0, 3.5 * h / 128), max(4.0, 6.5 * h / 128))  # never tiny on small images
    ranges: list[tuple[int, int] | None] = [None] + small_object_sizes(rng)
    if rng.random() < 0.5:
        ranges.append(None)
    for size_range in ranges:
        if size_range is None:

            def propose(g: np.random.Generator) -> np.ndarray:
                c = random_point(g, inner)
                r = g.uniform(*big_r)
                return ellipse2d(label.shape, c, (r, r * g.uniform(0.85, 1.15)), g.uniform(0, np.pi))

            mask = place(rng, propose, inner, taken, gap=2)
        else:
            mask = place(rng, small_object_proposer(inner, size_range), inner, taken, gap=2, size_range=size_range)
        if mask is not None:
            label[mask] = NODULE
            taken |= mask


def _ribs(shape: tuple[int, int], n: int, p: dict) -> np.ndarray:
    """Curved bright bands (posterior ribs) as a smooth additive attenuation map."""
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(float)
    ribs = np.zeros(shape)
    xc = w * (0.5 + p["offset"][1])
    for k in range(n):
        y0 = h * (0.2 + 0.6 * k / max(n - 1, 1))
        curve = y0 + 0.5 * h * ((x - xc) / w) ** 2
        ribs += np.exp(-(((y - curve) / (0.018 * h)) ** 2))
    return ribs


def render(p: dict, rng: np.random.Generator, size: tuple[int, ...]) -> Sample:
    """One radiograph of the patient: anatomy, nodules, ribs, texture, blur and quantum noise."""
    shape = (int(size[0]), int(size[1]))
    h, w = shape
    label = _anatomy(p, rng, shape)
    _nodules(label, rng)

    body = ellipse2d(shape, (h * (0.55 + p["offset"][0]), w * (0.5 + p["offset"][1])),
                     (0.55 * h, 0.47 * w * p["scale"]))
    att = np.full(shape, 2500.0)
    att[body] = 27000.0
    att[label == LUNG] = 9000.0
    att[label == HEART] = 31000.0
    att[label == NODULE] = 21000.0
    att += 2500.0 * smooth_field(rng, shape, 1.2) * (label == LUNG)  # vascular markings
    att += 1500.0 * smooth_field(rng, shape, 6.0) * body
    att += 5000.0 * _ribs(shape, p["n_ribs"], p) * body
    att = ndimage.gaussian_filter(att, 0.8) * p["exposure"]
    att += rng.normal(0.0, 350.0, shape)
    image = np.clip(np.rint(att), 0, 65535).astype(np.uint16)
    return Sample(image=image, label=label, spacing=(350.0 / h, 350.0 / w))  # a 35 cm field of view


SPEC = KindSpec(
    name="xray",
    ndim=2,
    classes={LUNG: "lung", HEART: "heart", NODULE: "nodule"},
    image_ext=".png",
    label_ext=".png",
    default_size=(128, 128),
    min_size=(48, 48),
    sample_patient=sample_patient,
    render=render,
)
