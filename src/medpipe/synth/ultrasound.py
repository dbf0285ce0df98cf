"""Ultrasound-like images: 8-bit grey PNG with multiplicative speckle; classes 1 nodule, 2 vessel.

Echogenicity (layered tissue with texture, hypoechoic nodules, anechoic vessels, depth attenuation
and posterior enhancement behind fluid) is multiplied by fully developed speckle: the magnitude of a
spatially correlated complex Gaussian field, i.e. Rayleigh distributed, normalised to mean 1. One
vessel runs along the main nodule, so objects of different classes touch.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import KindSpec, Sample
from .shapes import (
    blob2d,
    ellipse2d,
    place,
    random_harmonics,
    small_object_proposer,
    small_object_sizes,
    smooth_field,
)

NODULE, VESSEL = 1, 2
SMALL_NODULE = (30, 120)  # pixel count range of the extra small (but not tiny) nodule


def sample_patient(rng: np.random.Generator, size: tuple[int, ...]) -> dict:
    """Tissue layering, gland echogenicity, main nodule geometry and vessel course per patient."""
    return {
        "skin_depth": rng.uniform(0.05, 0.08),
        "muscle_depth": rng.uniform(0.16, 0.24),
        "gland": rng.uniform(0.85, 1.1),
        "nodule_center": (rng.uniform(0.48, 0.62), rng.uniform(0.35, 0.65)),
        "nodule_radius": rng.uniform(0.1, 0.15),
        "nodule_harmonics": random_harmonics(rng, n=3, irregularity=0.2),
        "vessel_radius": rng.uniform(0.035, 0.05),
        "attenuation": rng.uniform(0.6, 1.0),
    }


def speckle(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float] = (0.7, 1.4)) -> np.ndarray:
    """Fully developed speckle with mean 1: |correlated complex Gaussian| (Rayleigh distributed).

    Filtering the real and imaginary parts with the same Gaussian keeps the magnitude Rayleigh while
    giving speckle grains a size (elongated laterally, as for a real beam).
    """
    re = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    im = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    mag = np.hypot(re, im)
    return mag / mag.mean()


def _objects(p: dict, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Label map: main nodule, a vessel touching it, another vessel, small nodules."""
    h, w = shape
    m = min(h, w)
    label = np.zeros(shape, np.uint8)
    cy = h * p["nodule_center"][0] + rng.normal(0, 0.015 * h)
    cx = w * p["nodule_center"][1] + rng.normal(0, 0.03 * w)
    r = p["nodule_radius"] * m
    nodule = blob2d(shape, (cy, cx), r, p["nodule_harmonics"], rotation=rng.normal(0, 0.2))
    label[nodule] = NODULE

    # vessel along the nodule's lower border: overlapping it by a pixel or two, painted second
    vr = p["vessel_radius"] * m
    bottom = np.nonzero(nodule.any(axis=1))[0].max()
    vessel = ellipse2d(shape, (bottom + vr - 1.5, cx + rng.normal(0, 0.05 * w)), (vr, 0.3 * w), rng.normal(0, 0.08))
    label[vessel] = VESSEL
    taken = label > 0

    # a second vessel high up in the muscle/gland boundary, kept apart from the first objects
    def second_vessel(g: np.random.Generator) -> np.ndarray:
        y = g.uniform(p["muscle_depth"] + 0.05, 0.4) * h
        return ellipse2d(shape, (y, g.uniform(0.3, 0.7) * w), (0.7 * vr, 0.2 * w), g.normal(0, 0.15))

    mask = place(rng, second_vessel, np.ones(shape, bool), taken, gap=3)
    if mask is not None:
        label[mask] = VESSEL
        taken |= mask

    region = np.zeros(shape, bool)
    region[int((p["muscle_depth"] + 0.05) * h) : int(0.92 * h), int(0.06 * w) : int(0.94 * w)] = True
    for size_range in small_object_sizes(rng) + [SMALL_NODULE]:
        mask = place(rng, small_object_proposer(region, size_range), region, taken, gap=3, size_range=size_range)
        if mask is not None:
            label[mask] = NODULE
            taken |= mask
    return label



def render(p: dict, rng: np.random.Generator, size: tuple[int, ...]) -> Sample:
    """One B-mode frame of the patient: echogenicity map x speckle, depth gain, 8-bit."""
    shape = (int(size[0]), int(size[1]))
    h, w = shape
    label = _objects(p, rng, shape)

    depth = np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))
    echo = np.where(depth < p["skin_depth"], 1.6, 0.0)
    muscle = (depth >= p["skin_depth"]) & (depth < p["muscle_depth"])
    striation = 0.15 * np.sin(2 * np.pi * depth * h / 5.0 + 0.3 * smooth_field(rng, shape, 4.0))
    echo = np.where(muscle, 0.55 + striation, echo)
    gland = depth >= p["muscle_depth"]
    echo = np.where(gland, p["gland"] * (1.0 + 0.12 * smooth_field(rng, shape, 2.0)), echo)
    echo[label == NODULE] = 0.35 * (1.0 + 0.2 * smooth_field(rng, shape, 1.5))[label == NODULE]
    fluid = label == VESSEL
    echo[fluid] = 0.04
    # posterior acoustic enhancement: brighter tissue below fluid, fading with depth
    below = np.cumsum(fluid, axis=0) > 0
    echo = echo * np.where(below & ~fluid & (label == 0), 1.25, 1.0)
    echo = ndimage.gaussian_filter(echo, 0.6)
    gain = np.exp(-p["attenuation"] * depth) * (1.0 + 0.5 * depth)  # attenuation, partly compensated
    intensity = echo * gain * speckle(rng, shape)
    image = 255.0 * np.log1p(3.0 * intensity) / np.log1p(3.0 * 2.6)  # log compression
    return Sample(image=np.clip(np.rint(image), 0, 255).astype(np.uint8), label=label, spacing=(0.2, 0.2))


SPEC = KindSpec(
    name="ultrasound",
    ndim=2,
    classes={NODULE: "nodule", VESSEL: "vessel"},
    image_ext=".png",
    label_ext=".png",
    default_size=(128, 128),
    min_size=(48, 48),
    sample_patient=sample_patient,
    render=render,
)
