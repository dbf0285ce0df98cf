"""Abdominal CT-like volumes: NIfTI int16 in Hounsfield units, anisotropic spacing; classes
1 liver, 2 kidney (two instances), 3 spleen, 4 tumour (inside the liver).

Axial slices are thick (2.5 mm) and pixels fine (0.8 mm), as in clinical abdominal CT, and the
spacing is written into the NIfTI affine so that ingest has to carry it through. The right kidney
abuts the liver (touching classes); liver tumours range from a tiny one (a few tens of voxels) to
a few hundred voxels, sometimes with one below the size filter.
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

LIVER, KIDNEY, SPLEEN, TUMOUR = 1, 2, 3, 4
SPACING = (2.5, 0.8, 0.8)  # z, y, x in mm
HU_MIN, HU_MAX = -1024, 1500


def sample_patient(rng: np.random.Generator, size: tuple[int, ...]) -> dict:
    """Body size, organ sizes and positions, and contrast phase (organ HU) per patient."""
    return {
        "body": rng.uniform(0.88, 1.0, 2),
        "offset": rng.uniform(-0.03, 0.03, 2),
        "liver": rng.uniform(0.9, 1.1, 3),
        "spleen": rng.uniform(0.8, 1.2),
        "kidney": rng.uniform(0.9, 1.1),
        "kidney_z": rng.uniform(0.4, 0.55),
        "enhancement": rng.uniform(0.8, 1.2),
    }


def _organs(p: dict, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Label volume with liver, spleen, two kidneys (the right one abutting the liver)."""
    nz, ny, nx = shape
    oy = ny * (p["offset"][0] + rng.normal(0, 0.01))
    ox = nx * (p["offset"][1] + rng.normal(0, 0.01))
    oz = nz * rng.normal(0, 0.02)
    label = np.zeros(shape, np.uint8)
    lz, ly, lx = p["liver"]
    liver = ellipsoid3d(shape, (0.55 * nz + oz, 0.42 * ny + oy, 0.32 * nx + ox),
                        (0.42 * nz * lz, 0.2 * ny * ly, 0.19 * nx * lx), 0.5)
    label[liver] = LIVER
    sp = p["spleen"]
    spleen = ellipsoid3d(shape, (0.6 * nz + oz, 0.52 * ny + oy, 0.76 * nx + ox),
                         (0.25 * nz * sp, 0.12 * ny * sp, 0.06 * nx * sp), -0.6)
    label[spleen] = SPLEEN
    k = p["kidney"]
    radii = (0.22 * nz * k, 0.085 * ny * k, 0.055 * nx * k)
    # right kidney: its centre sits on the liver's posterior edge, so the two organs touch
    right_c = (p["kidney_z"] * nz + oz, 0.58 * ny + oy, 0.35 * nx + ox)
    left_c = (p["kidney_z"] * nz + oz, 0.61 * ny + oy, 0.66 * nx + ox)
    for centre, angle in ((right_c, 0.35), (left_c, -0.35)):
        kidney = ellipsoid3d(shape, centre, radii, angle)
        label[kidney & (label != SPLEEN)] = KIDNEY
    _liver_one_piece(label)
    return label


def _liver_one_piece(label: np.ndarray) -> None:
    """Kidney and tumours can shave single voxels off the liver's edge; drop such fragments so
    the liver stays one instance."""
    label[(label == LIVER) & ~keep_largest(label == LIVER)] = 0


def _tumours(label: np.ndarray, rng: np.random.Generator) -> None:
    """One regular tumour and small ones, all inside the liver and apart from each other."""
    liver = label == LIVER
    inner = ndimage.binary_erosion(liver, iterations=1)
    taken = np.zeros(label.shape, bool)
    z_scale = SPACING[1] / SPACING[0]
    # the regular tumour scales with the volume (it must leave room in a small liver), tiny ones do not
    f = label.size / np.prod(SPEC.default_size)
    regular = (int(max(60, 150 * f)), int(max(150, 600 * f)))
    for size_range in [regular] + small_object_sizes(rng):
        mask = place(rng, small_object_proposer(inner, size_range, z_scale), inner, taken, gap=2, size_range=size_range)
        if mask is not None:
            label[mask] = TUMOUR
            taken |= mask
    _liver_one_piece(label)


def _body_hu(p: dict, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Air, subcutaneous fat, muscle/soft tissue, spine and aorta (not labelled) in HU."""
    nz, ny, nx = shape
    cy, cx = ny * (0.5 + p["offset"][0]), nx * (0.5 + p["offset"][1])
    ry, rx = 0.4 * ny * p["body"][0], 0.47 * nx * p["body"][1]
    body = ellipse2d((ny, nx), (cy, cx), (ry, rx))
    inner = ellipse2d((ny, nx), (cy, cx), (ry - 4, rx - 4))
    hu = np.full((ny, nx), -1000.0)
    hu[body] = -100.0  # fat
    hu[inner] = 40.0  # soft tissue
    vert_c = (cy + 0.27 * ny, cx)
    hu[ellipse2d((ny, nx), vert_c, (0.075 * ny, 0.07 * nx))] = 1300.0  # cortical bone
    hu[ellipse2d((ny, nx), vert_c, (0.06 * ny, 0.055 * nx))] = 300.0  # cancellous bone
    hu[ellipse2d((ny, nx), (cy + 0.14 * ny, cx - 0.02 * nx), (0.035 * ny, 0.035 * nx))] = 170.0 * p["enhancement"]
    volume = np.repeat(hu[None], nz, axis=0)
    # a few bowel gas pockets in the soft tissue, varying along z
    for _ in range(3):
        c = (rng.uniform(0.2, 0.8) * nz, cy - rng.uniform(0.1, 0.3) * ny, cx + rng.uniform(-0.1, 0.25) * nx)
        gas = ellipsoid3d(shape, c, (1.5, 0.03 * ny, 0.04 * nx), rng.uniform(0, np.pi))
        volume[gas & inner[None]] = -850.0
    return volume


def render(p: dict, rng: np.random.Generator, size: tuple[int, ...]) -> Sample:
    """One CT scan of the patient: organs, tumours, body, texture, partial volume, noise, int16."""
    shape = (int(size[0]), int(size[1]), int(size[2]))
    label = _organs(p, rng, shape)
    _tumours(label, rng)

    hu = _body_hu(p, rng, shape)
    e = p["enhancement"]
    organ_hu = {LIVER: 95.0 * e, KIDNEY: 180.0 * e, SPLEEN: 105.0 * e, TUMOUR: 40.0}  # portal venous phase
    texture = smooth_field(rng, shape, (0.5, 1.5, 1.5))
    for cls, value in organ_hu.items():
        sel = label == cls
        hu[sel] = value + 8.0 * texture[sel]
    hu = ndimage.gaussian_filter(hu, (0.4, 0.6, 0.6))  # partial volume / reconstruction kernel
    hu += rng.normal(0.0, 12.0, shape)
    image = np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
    return Sample(image=image, label=label, spacing=SPACING)


SPEC = KindSpec(
    name="ct",
    ndim=3,
    classes={LIVER: "liver", KIDNEY: "kidney", SPLEEN: "spleen", TUMOUR: "tumour"},
    image_ext=".nii.gz",
    label_ext=".nii.gz",
    default_size=(24, 96, 96),
    min_size=(16, 64, 64),
    sample_patient=sample_patient,
    render=render,
)
