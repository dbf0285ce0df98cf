"""Seeding and shape helpers shared by the synthetic modalities.

The demo data must exercise what real data throws at the pipeline (several instances of one class,
touching objects of different classes, objects of very different sizes, tiny ones near the 20 px
size filter), and it must be exactly reproducible. These helpers keep both concerns in one place:
per-file generators derived from ``(seed, kind, patient, idx)`` and mask builders that place
objects with guaranteed separation or guaranteed size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage import draw

# Smallest object the pipeline keeps (objects below it are filtered); "tiny" objects are just above.
MIN_KEPT_SIZE = 20
TINY_MAX_SIZE = 60


def _kind_code(kind: str) -> int:
    """A stable integer for a kind name (``hash()`` is salted per process, crc32 is not)."""
    return zlib.crc32(kind.encode("utf-8"))


def patient_rng(seed: int, kind: str, patient: int) -> np.random.Generator:
    """Generator for one patient's anatomy, shared by all images of that patient."""
    return np.random.default_rng(np.random.SeedSequence([seed, _kind_code(kind), 0, patient]))


def image_rng(seed: int, kind: str, patient: int, idx: int) -> np.random.Generator:
    """Generator for one file; independent of how many other files are generated."""
    return np.random.default_rng(np.random.SeedSequence([seed, _kind_code(kind), 1, patient, idx]))


def ellipse2d(
    shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """Boolean mask of a filled ellipse (radii along rows, cols; ``angle`` in radians)."""
    mask = np.zeros(tuple(shape), dtype=bool)
    rr, cc = draw.ellipse(center[0], center[1], radii[0], radii[1], shape=tuple(shape), rotation=angle)
    mask[rr, cc] = True
    return mask


def blob2d(
    shape: Sequence[int],
    center: Sequence[float],
    radius: float,
    harmonics: np.ndarray,
    rotation: float = 0.0,
    n_vertices: int = 90,
) -> np.ndarray:
    """Irregular star-shaped blob: radius(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)).

    ``harmonics`` is an array of shape (K, 2) with amplitude and phase of harmonics 2..K+1, so a
    patient's lesion keeps its outline across images while ``rotation`` varies per image.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    factor = np.ones_like(theta)
    for k, (amp, phase) in enumerate(harmonics, start=2):
        factor += amp * np.cos(k * (theta + rotation) + phase)
    r = radius * np.clip(factor, 0.3, None)
    rows = center[0] + r * np.sin(theta)
    cols = center[1] + r * np.cos(theta)
    mask = np.zeros(tuple(shape), dtype=bool)
    rr, cc = draw.polygon(rows, cols, shape=tuple(shape))
    mask[rr, cc] = True
    return mask


def random_harmonics(rng: np.random.Generator, n: int = 4, irregularity: float = 0.12) -> np.ndarray:
    """Amplitudes decaying with order (smooth outlines) and random phases, for :func:`blob2d`."""
    amps = irregularity * rng.uniform(0.3, 1.0, n) / np.arange(1, n + 1)
    phases = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack([amps, phases], axis=1)


def ellipsoid3d(
    shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """Boolean mask of an ellipsoid in voxel units (z, y, x), rotated by ``angle`` in the y-x plane."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    dz = (z - center[0]) / radii[0]
    dy0 = y - center[1]
    dx0 = x - center[2]
    cos, sin = np.cos(angle), np.sin(angle)
    dy = (cos * dy0 + sin * dx0) / radii[1]
    dx = (-sin * dy0 + cos * dx0) / radii[2]
    return dz**2 + dy**2 + dx**2 <= 1.0


def smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean and unit standard deviation (texture)."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="reflect")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of ``mask`` (slivers cut off by an overlapping organ go)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def is_separated(mask: np.ndarray, others: np.ndarray, gap: int) -> bool:
    """True when ``mask`` keeps at least ``gap`` pixels/voxels (chessboard) away from ``others``."""
    if gap <= 0:
        return not (mask & others).any()
    # dilate only the object's bounding box (plus the gap): objects are small, images are not
    coords = np.argwhere(mask)
    if len(coords) == 0:
        return True
    lo = np.maximum(coords.min(axis=0) - gap, 0)
    hi = np.minimum(coords.max(axis=0) + gap + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    structure = np.ones((3,) * mask.ndim, bool)
    grown = ndimage.binary_dilation(mask[box], structure=structure, iterations=gap)
    return not (grown & others[box]).any()

def place(
    rng: np.random.Generator,
    propose: Callable[[np.random.Generator], np.ndarray],
    allowed: np.ndarray,
    forbidden: np.ndarray,
    gap: int = 2,
    size_range: tuple[int, int] | None = None,
    tries: int = 60,
) -> np.ndarray | None:
    """Rejection-sample an object mask lying inside ``allowed`` and ``gap`` away from ``forbidden``.

    ``size_range`` (inclusive) pins the object's pixel count, which is how tiny objects are made to
    land just above (or deliberately below) the size filter. Returns None when no proposal fits,
    so callers decide whether an object is optional.
    """
    for _ in range(tries):
        mask = propose(rng)
        size = int(mask.sum())
        if size == 0:
            continue
        if size_range is not None and not (size_range[0] <= size <= size_range[1]):
            continue
        if (mask & ~allowed).any():
            continue
        if not is_separated(mask, forbidden, gap):
            continue
        return mask
    return None


def random_point(rng: np.random.Generator, region: np.ndarray) -> tuple[int, ...] | None:
    """A uniformly chosen coordinate inside ``region`` (None if the region is empty)."""
    coords = np.argwhere(region)
    if len(coords) == 0:
        return None
    return tuple(int(c) for c in coords[rng.integers(len(coords))])


def small_object_sizes(rng: np.random.Generator, sub_threshold_p: float = 0.3) -> list[tuple[int, int]]:
    """Size ranges of the small objects of one image: always one tiny kept object, sometimes one
    below the size filter (so the filter has something to remove)."""
    ranges = [(MIN_KEPT_SIZE, TINY_MAX_SIZE)]
    if rng.random() < sub_threshold_p:
        ranges.append((3, MIN_KEPT_SIZE - 1))
    return ranges



def small_object_proposer(
    region: np.ndarray, size_range: tuple[int, int], z_scale: float = 1.0
) -> Callable[[np.random.Generator], np.ndarray]:
    """Proposals for a small round object centred in ``region`` with a radius that fits ``size_range``.

    The radius follows from the target area (2D) or volume (3D); for volumes ``z_scale`` is the
    ratio in-plane spacing / slice spacing, so the object is round in millimetres.
    """
    lo, hi = size_range
    ndim = region.ndim
    # in-plane pixel units; centres are drawn where the whole object fits inside the region
    sampling = (1.0 / max(z_scale, 1e-3), 1.0, 1.0) if ndim == 3 else None
    depth = np.zeros(region.shape)
    coords = np.argwhere(region)
    if len(coords):  # distance only inside the region's bounding box (plus a zero border)
        box = tuple(slice(max(lo_ - 1, 0), hi_ + 2) for lo_, hi_ in zip(coords.min(axis=0), coords.max(axis=0)))
        depth[box] = ndimage.distance_transform_edt(region[box], sampling=sampling)

    def propose(rng: np.random.Generator) -> np.ndarray:
        target = rng.uniform(lo, hi)
        if ndim == 2:
            r = np.sqrt(target / np.pi)
        else:
            r = np.cbrt(target / (4.0 / 3.0 * np.pi * max(z_scale, 1e-3)))
        fits = depth > r + 0.5
        center = random_point(rng, fits if fits.any() else region)
        if center is None:
            return np.zeros(region.shape, bool)
        center = np.asarray(center, float) + rng.uniform(-0.5, 0.5, ndim)
        if ndim == 2:
            return ellipse2d(region.shape, center, r * rng.uniform(0.9, 1.1, 2), rng.uniform(0, np.pi))
        radii = (max(r * z_scale, 0.55), r, r)
        return ellipsoid3d(region.shape, center, radii, rng.uniform(0, np.pi))

    return propose
