"""Prostate MR-like volumes (T2-weighted look): NIfTI float32 with a smooth multiplicative bias
field; classes 1 prostate, 2 lesion (inside the prostate, several, one tiny).

Signal intensities are arbitrary units as from a scanner; the bias field (coil sensitivity) is a
smooth exponential of a low-order polynomial, so intensity normalisation has something to undo.
Noise is Rician (magnitude of a complex Gaussian), as in magnitude MR images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import KindSpec, Sample
from .shapes import (
    ellipse2d,
    ellipsoid3d,
    keep_largest,
    place,
    small_object_proposer,
    small_object_sizes,
    smooth_field,
)

PROSTATE, LESION = 1, 2
SPACING = (3.0, 0.6, 0.6)  # z, y, x in mm


def sample_patient(rng: np.random.Generator, size: tuple[int, ...]) -> dict:
    """Gland size and position, body habitus, and coil bias coefficients per patient."""
    return {
        "gland": rng.uniform(0.85, 1.2, 3),
        "offset": rng.uniform(-0.04, 0.04, 2),
        "body": rng.uniform(0.85, 1.0, 2),
        "bias": rng.normal(0.0, 0.25, 6),
        "scale": rng.uniform(400.0, 900.0),
    }


def bias_field(coeffs: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """exp(quadratic polynomial in normalised coordinates), scaled to mean 1: smooth, positive."""
    z, y, x = (np.linspace(-1.0, 1.0, n) for n in shape)
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    a = coeffs
    log_b = a[0] * x + a[1] * y + a[2] * z + a[3] * x * y + a[4] * x**2 + a[5] * y**2
    field = np.exp(log_b)
    return field / field.mean()


def _structures(
    p: dict, rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Prostate label (and the gland centre) with lesions: one regular lesion in the peripheral zone, one tiny,
    sometimes one below the size filter, and sometimes a lesion reaching the gland's edge."""
    nz, ny, nx = shape
    oy = ny * (p["offset"][0] + rng.normal(0, 0.01))
    ox = nx * (p["offset"][1] + rng.normal(0, 0.01))
    gz, gy, gx = p["gland"]
    centre = (0.5 * nz + rng.normal(0, 0.3), 0.55 * ny + oy, 0.5 * nx + ox)
    prostate = ellipsoid3d(shape, centre, (0.32 * nz * gz, 0.17 * ny * gy, 0.2 * nx * gx), rng.normal(0, 0.05))
    label = np.zeros(shape, np.uint8)
    label[prostate] = PROSTATE
    inner = ndimage.binary_erosion(prostate, iterations=1)
    taken = np.zeros(shape, bool)
    z_scale = SPACING[1] / SPACING[0]
    # regular lesions scale with the volume (they must leave room in a small gland), tiny ones do not
    f = label.size / np.prod(SPEC.default_size)
    ranges = [(int(max(40, 120 * f)), int(max(100, 400 * f)))] + small_object_sizes(rng)
    if rng.random() < 0.5:
        ranges.append((int(max(30, 60 * f)), int(max(60, 150 * f))))
    for size_range in ranges:
        mask = place(rng, small_object_proposer(inner, size_range, z_scale), inner, taken, gap=2, size_range=size_range)
        if mask is not None:
            label[mask] = LESION
            taken |= mask
    label[(label == PROSTATE) & ~keep_largest(label == PROSTATE)] = 0
    return label, centre


def render(p: dict, rng: np.random.Generator, size: tuple[int, ...]) -> Sample:
    """One T2-like scan: fat, muscle, bladder, rectum, zonal prostate, lesions, bias, Rician noise."""
    shape = (int(size[0]), int(size[1]), int(size[2]))
    nz, ny, nx = shape
    label, centre = _structures(p, rng, shape)

    cy, cx = centre[1], centre[2]
    plane = (ny, nx)
    body = ellipse2d(plane, (0.5 * ny, 0.5 * nx), (0.46 * ny * p["body"][0], 0.48 * nx * p["body"][1]))
    muscle = ellipse2d(plane, (0.5 * ny, 0.5 * nx), (0.4 * ny * p["body"][0], 0.42 * nx * p["body"][1]))
    signal2d = np.zeros(plane)
    signal2d[body] = 0.9  # subcutaneous fat is bright on T2 (fast spin echo)
    signal2d[muscle] = 0.3
    for side in (-1, 1):  # femoral heads: fatty marrow inside a dark cortex
        head = (0.55 * ny, 0.5 * nx + side * 0.33 * nx)
        signal2d[ellipse2d(plane, head, (0.1 * ny, 0.08 * nx))] = 0.05
        signal2d[ellipse2d(plane, head, (0.085 * ny, 0.065 * nx))] = 0.7
    signal2d[ellipse2d(plane, (cy + 0.17 * ny, cx), (0.06 * ny, 0.07 * nx))] = 0.15  # rectal wall
    signal2d[ellipse2d(plane, (cy + 0.17 * ny, cx), (0.035 * ny, 0.045 * nx))] = 0.02  # rectal gas
    signal = np.repeat(signal2d[None], nz, axis=0)
    bladder = ellipsoid3d(shape, (0.85 * nz, cy - 0.17 * ny, cx), (0.35 * nz, 0.12 * ny, 0.15 * nx))
    signal[bladder] = 1.3  # urine: very bright on T2
    signal *= 1.0 + 0.08 * smooth_field(rng, shape, (0.5, 2.0, 2.0))

    gland = label > 0
    # zonal anatomy: bright peripheral zone around a darker transition zone
    depth = ndimage.distance_transform_edt(gland, sampling=SPACING)
    pz = np.clip(depth / 4.0, 0.0, 1.0)
    signal[gland] = (0.75 - 0.35 * pz[gland]) * (1.0 + 0.1 * smooth_field(rng, shape, 1.0)[gland])
    signal[label == LESION] = 0.22
    signal = ndimage.gaussian_filter(signal, (0.3, 0.7, 0.7))

    signal = signal * bias_field(p["bias"], shape) * p["scale"]
    sigma = 0.02 * p["scale"]
    noisy = np.hypot(signal + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))  # Rician
    return Sample(image=noisy.astype(np.float32), label=label, spacing=SPACING)


SPEC = KindSpec(
    name="mri",
    ndim=3,
    classes={PROSTATE: "prostate", LESION: "lesion"},
    image_ext=".nii.gz",
    label_ext=".nii.gz",
    default_size=(20, 96, 96),
    min_size=(12, 64, 64),
    sample_patient=sample_patient,
    render=render,
)
