"""Dermoscopy-like images: RGB JPEG; classes 1 lesion, 2 satellite.

A pigmented lesion with an irregular outline (the patient's lesion keeps its outline across images,
only the view rotates and shifts) surrounded by satellite spots: one touching the lesion, one tiny,
sometimes one below the size filter. Skin texture, a dark dermoscope vignette and hairs (image only,
as hairs are not annotated) make the image less trivial than the label.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw

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

LESION, SATELLITE = 1, 2

_SKIN_TONES = np.array([[236, 196, 170], [222, 172, 140], [198, 144, 110], [160, 110, 80]], float)


def sample_patient(rng: np.random.Generator, size: tuple[int, ...]) -> dict:
    """Skin tone, lesion size, outline and pigment: fixed for all images of the patient."""
    tone = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] + rng.normal(0, 6, 3)
    return {
        "skin": tone,
        "radius": rng.uniform(0.17, 0.25),
        "harmonics": random_harmonics(rng, n=5, irregularity=0.3),
        "pigment": np.array([95, 60, 45], float) * rng.uniform(0.7, 1.2),
    }


def _satellites(label: np.ndarray, lesion: np.ndarray, rng: np.random.Generator, radius: float) -> None:
    """One satellite on the lesion rim (touching), one or two free ones, one tiny, maybe one
    below the size filter; satellites never touch each other."""
    shape = label.shape
    dist = ndimage.distance_transform_edt(~lesion)
    ring = (dist > 3) & (dist < 0.9 * radius)
    taken = np.zeros(shape, bool)

    # touching satellite: centred just outside the rim, so it overlaps the lesion border
    rim = (dist > 1.5) & (dist < 3.0)

    def touching(g: np.random.Generator) -> np.ndarray:
        coords = np.argwhere(rim)
        c = coords[g.integers(len(coords))]
        r = g.uniform(3.0, 4.5) * max(shape[0] / 128, 0.8)
        return ellipse2d(shape, c, (r, r), 0.0)

    free = np.ones(shape, bool)
    mask = place(rng, touching, free, taken, gap=2)
    if mask is not None:
        label[mask] = SATELLITE
        taken |= mask

    def regular(g: np.random.Generator) -> np.ndarray:
        coords = np.argwhere(ring)
        c = coords[g.integers(len(coords))]
        r = g.uniform(3.0, 5.0) * max(shape[0] / 128, 0.8)
        return ellipse2d(shape, c, (r, r * g.uniform(0.7, 1.0)), g.uniform(0, np.pi))

    specs: list[tuple[int, int] | None] = [None] * int(rng.integers(1, 3)) + small_object_sizes(rng)
    for size_range in specs:
        if size_range is None:
            mask = place(rng, regular, ~lesion, taken | lesion, gap=2)
        else:
            mask = place(rng, small_object_proposer(ring, size_range), ~lesion, taken | lesion, gap=2,
                         size_range=size_range)
        if mask is not None:
            label[mask] = SATELLITE
            taken |= mask


def _hairs(image: np.ndarray, rng: np.random.Generator) -> None:
    """Dark thin curved hairs drawn into the image (quadratic Bezier curves)."""
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        (r0, c0), (r1, c1), (r2, c2) = np.rint(rng.uniform(0, 1, (3, 2)) * [h - 1, w - 1]).astype(int)
        rr, cc = draw.bezier_curve(r0, c0, r1, c1, r2, c2, 1.0, shape=(h, w))
        image[rr, cc] *= 0.35

def render(p: dict, rng: np.random.Generator, size: tuple[int, ...]) -> Sample:
    """One dermoscopic view: lesion at a jittered position and rotation, satellites, skin, hairs."""
    shape = (int(size[0]), int(size[1]))
    h, w = shape
    radius = p["radius"] * min(h, w)
    center = (h / 2 + rng.normal(0, 0.04 * h), w / 2 + rng.normal(0, 0.04 * w))
    lesion = blob2d(shape, center, radius, p["harmonics"], rotation=rng.uniform(0, 2 * np.pi))
    label = np.zeros(shape, np.uint8)
    label[lesion] = LESION
    _satellites(label, lesion, rng, radius)

    skin = p["skin"][None, None, :] * (1.0 + 0.04 * smooth_field(rng, shape, 3.0))[..., None]
    # pigment is darkest in the lesion centre, with a reticular (network) texture
    dist_in = ndimage.distance_transform_edt(label == LESION)
    depth = np.clip(dist_in / max(dist_in.max(), 1.0), 0, 1)
    network = 0.5 + 0.5 * np.tanh(2.0 * smooth_field(rng, shape, 1.2))
    weight = ndimage.gaussian_filter((label > 0).astype(float), 1.0)
    weight *= 0.75 + 0.25 * network * (label != SATELLITE)
    pigment = p["pigment"][None, None, :] * (1.15 - 0.45 * depth)[..., None]
    image = skin * (1 - weight[..., None]) + pigment * weight[..., None]

    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    image *= np.clip(1.25 - 0.6 * r**2, 0.05, 1.0)[..., None]  # dermoscope vignette
    _hairs(image, rng)
    image += rng.normal(0, 3.0, image.shape)
    return Sample(image=np.clip(np.rint(image), 0, 255).astype(np.uint8), label=label, spacing=(0.05, 0.05))


SPEC = KindSpec(
    name="dermoscopy",
    ndim=2,
    classes={LESION: "lesion", SATELLITE: "satellite"},
    image_ext=".jpg",
    label_ext=".png",
    default_size=(128, 128),
    min_size=(48, 48),
    sample_patient=sample_patient,
    render=render,
)
