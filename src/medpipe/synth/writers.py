"""Deterministic, atomic writers for the synthetic files (PNG, JPEG, NIfTI, JSON).

Same seed and arguments must give byte-identical files, so that data checksums recorded by ingest
are stable across reruns. PNG and JPEG encoders are deterministic for fixed settings; NIfTI
``.nii.gz`` is not by default because gzip stores the write time, so volumes are serialised to
bytes first and gzipped with ``mtime=0``. Every file goes to a temporary name in the target folder
and is renamed into place, so an interrupted run never leaves a truncated image behind.
"""

from __future__ import annotations

import gzip
import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np

JPEG_QUALITY = 92


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of a uint8/uint16 grey image or a uint8 RGB image."""
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG needs uint8 or uint16 data, got {array.dtype}")
    return iio.imwrite("<bytes>", array, extension=".png")


def jpeg_bytes(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG encoding of a uint8 RGB image at a fixed quality."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise TypeError(f"JPEG needs a uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
    return iio.imwrite("<bytes>", array, extension=".jpg", quality=quality)


def nifti_affine(spacing_zyx: tuple[float, float, float], shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Axis-aligned affine (RAS, mm) for an array stored as nibabel's (x, y, z), centred on 0."""
    sz, sy, sx = spacing_zyx
    affine = np.diag([sx, sy, sz, 1.0])
    nz, ny, nx = shape_zyx
    affine[:3, 3] = [-(nx - 1) * sx / 2.0, -(ny - 1) * sy / 2.0, -(nz - 1) * sz / 2.0]
    return affine


def nifti_gz_bytes(array_zyx: np.ndarray, spacing_zyx: tuple[float, float, float]) -> bytes:
    """Reproducible ``.nii.gz`` bytes of a (z, y, x) array with the given voxel spacing in mm.

    medpipe arrays are (z, y, x); NIfTI stores (x, y, z), hence the transpose.
    """
    affine = nifti_affine(spacing_zyx, array_zyx.shape)
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), affine)
    img.header.set_data_dtype(array_zyx.dtype)
    img.header.set_xyzt_units(xyz="mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def json_bytes(obj: object) -> bytes:
    """Stable JSON (sorted keys, fixed indentation, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
