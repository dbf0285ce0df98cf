"""Shared drawing and writing helpers of the layout miniatures.

Every writer is byte-reproducible (gzip with mtime 0, fixed JPEG quality, DICOM UIDs derived from
the seed) and atomic (temporary name + rename, via the library's synth writer). Shapes come from
``medpipe.synth.shapes`` where it has them; the few extra ones (tubes, boxes, polygons) are here.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
from skimage import draw

from medpipe.files import write_bytes
from medpipe.synth.shapes import blob2d, ellipse2d, ellipsoid3d, random_harmonics, smooth_field
from medpipe.synth.writers import JPEG_QUALITY

from layouts.expected import Entry, Expected

__all__ = [
    "Tree", "affine_diag", "blob", "box", "check_defects", "ellipse", "ellipsoid", "grey_image", "polygon",
    "rgb_image", "tube",
]


# ------------------------------------------------------------------------------------------ shapes


def ellipse(shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    return ellipse2d(shape, center, radii, angle)


def blob(rng: np.random.Generator, shape: Sequence[int], center: Sequence[float], radius: float) -> np.ndarray:
    """An irregular round object (lesion, polyp) around ``center``."""
    return blob2d(shape, center, radius, random_harmonics(rng, 3, 0.2), rotation=float(rng.uniform(0, 6.28)))


def ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    return ellipsoid3d(shape, center, radii, angle)


def box(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Boolean box ``lo <= index < hi`` per axis."""
    mask = np.zeros(tuple(shape), bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def polygon(shape: Sequence[int], rows: Sequence[float], cols: Sequence[float]) -> np.ndarray:
    """Filled polygon with skimage.draw.polygon semantics (the reference's contour rasterisation)."""
    mask = np.zeros(tuple(shape), bool)
    rr, cc = draw.polygon(np.asarray(rows), np.asarray(cols), shape=tuple(shape))
    mask[rr, cc] = True
    return mask


def tube(shape_zyx: Sequence[int], start_yx: Sequence[float], end_yx: Sequence[float], radius: float,
         z_range: tuple[int, int] | None = None) -> np.ndarray:
    """A vessel-like tube along z whose centre moves linearly from ``start_yx`` to ``end_yx``."""
    nz = shape_zyx[0]
    z0, z1 = z_range if z_range is not None else (0, nz)
    mask = np.zeros(tuple(shape_zyx), bool)
    for z in range(z0, z1):
        t = (z - z0) / max(z1 - z0 - 1, 1)
        cy = start_yx[0] + t * (end_yx[0] - start_yx[0])
        cx = start_yx[1] + t * (end_yx[1] - start_yx[1])
        mask[z] = ellipse2d(shape_zyx[1:], (cy, cx), (radius, radius))
    return mask


# ------------------------------------------------------------------------------------------ images


def grey_image(rng: np.random.Generator, label: np.ndarray, levels: dict[int, float], background: float,
               noise: float, dtype=np.uint8, lo: float = 0.0, hi: float = 255.0, sigma: float = 1.5) -> np.ndarray:
    """A textured grey image whose regions follow ``label`` (value -> mean intensity)."""
    image = np.full(label.shape, background, float)
    for value, level in levels.items():
        image[label == value] = level
    image += noise * smooth_field(rng, label.shape, sigma) + 0.3 * noise * rng.standard_normal(label.shape)
    if np.issubdtype(dtype, np.integer):
        image = np.rint(image)
    return np.clip(image, lo, hi).astype(dtype)


def rgb_image(rng: np.random.Generator, label: np.ndarray, colours: dict[int, Sequence[float]],
              background: Sequence[float], noise: float = 12.0) -> np.ndarray:
    """A textured uint8 RGB image (Y, X, 3) whose regions follow ``label`` (value -> RGB)."""
    image = np.empty(label.shape + (3,), float)
    image[:] = background
    for value, colour in colours.items():
        image[label == value] = colour
    image += noise * smooth_field(rng, label.shape, 2.0)[..., None]
    image += 0.3 * noise * rng.standard_normal(image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ writing


def _code(key) -> int:
    return zlib.crc32(str(key).encode("utf-8")) if not isinstance(key, int) else key


def check_defects(module: str, defects: Iterable[str], known: dict[str, str]) -> tuple[str, ...]:
    defects = tuple(defects)
    unknown = [d for d in defects if d not in known]
    if unknown:
        raise ValueError(f"{module}: unknown defects {unknown}; known: {sorted(known)}")
    return defects


class Tree:
    """Writes one miniature under ``root`` and hands out per-file random generators."""

    def __init__(self, root: str | Path, name: str, folder: str, seed: int):
        self.root = Path(root)
        self.name = name
        self.folder = folder
        self.seed = int(seed)
        self.root.mkdir(parents=True, exist_ok=True)
        if any(self.root.iterdir()):     # leftovers of another run would blur what Expected describes
            raise FileExistsError(f"{self.root}: a miniature needs an empty folder")

    def rng(self, *keys) -> np.random.Generator:
        """Generator for one file or object: independent of how many others are drawn."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, _code(self.name), *map(_code, keys)]))

    def path(self, rel: str) -> Path:
        return self.root / rel

    def uid(self, *keys) -> str:
        """A DICOM UID derived from the seed and ``keys`` (reproducible, unique per key)."""
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=[str(self.seed), self.name, *map(str, keys)]))

    # ---- raw bytes
    def bytes(self, rel: str, data: bytes) -> Path:
        path = self.path(rel)
        write_bytes(path, data)
        return path

    def text(self, rel: str, text: str) -> Path:
        return self.bytes(rel, text.encode("utf-8"))

    def json(self, rel: str, obj, indent: int | None = 2) -> Path:
        return self.bytes(rel, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))

    # ---- 2D raster formats
    def png(self, rel: str, array: np.ndarray, one_bit: bool = False) -> Path:
        """PNG of a grey/RGB(A) uint8/uint16 array; ``one_bit`` writes a bool mask as PIL mode "1"."""
        if one_bit:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(np.asarray(array, bool)).save(buffer, format="PNG")
            return self.bytes(rel, buffer.getvalue())
        if array.dtype not in (np.uint8, np.uint16):
            raise TypeError(f"{rel}: PNG needs uint8/uint16, got {array.dtype}")
        return self.bytes(rel, iio.imwrite("<bytes>", array, extension=".png"))

    def jpg(self, rel: str, rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
        """JPEG of a uint8 grey or RGB image; returns the decoded pixels (what a reader will see)."""
        data = iio.imwrite("<bytes>", rgb, extension=".jpg", quality=quality)
        self.bytes(rel, data)
        return np.asarray(iio.imread(data, extension=".jpg"))

    def pgm(self, rel: str, array: np.ndarray) -> Path:
        """Binary PGM (P5) of a uint8 grey image, as Pillow writes it."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PPM")
        return self.bytes(rel, buffer.getvalue())

    def tif(self, rel: str, array: np.ndarray) -> Path:
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, photometric="rgb" if array.ndim == 3 else "minisblack")
        return self.bytes(rel, buffer.getvalue())

    def npy(self, rel: str, array: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.bytes(rel, buffer.getvalue())

    # ---- volumes
    def nifti(self, rel: str, data: np.ndarray, affine: np.ndarray) -> Path:
        """NIfTI-1 of ``data`` in nibabel's voxel order (i, j, k); gzip (mtime 0) when rel ends .gz."""
        image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        image.header.set_data_dtype(data.dtype)
        image.header.set_xyzt_units(xyz="mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        raw = image.to_bytes()
        return self.bytes(rel, gzip.compress(raw, compresslevel=6, mtime=0) if rel.endswith(".gz") else raw)

    def itk(self, rel: str, array: np.ndarray, spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
            origin_xyz: Sequence[float] | None = None, meta: dict[str, str] | None = None,
            compress: bool = False, vector: bool = False) -> Path:
        """MHA / NRRD via SimpleITK of a (z, y, x) or (y, x) array (``vector``: last axis = components)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
        dim = image.GetDimension()
        image.SetSpacing([float(s) for s in spacing_xyz[:dim]])
        if origin_xyz is not None:
            image.SetOrigin([float(o) for o in origin_xyz[:dim]])
        for key, value in (meta or {}).items():
            image.SetMetaData(key, value)
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the extension SimpleITK keys on
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    def dicom_series(self, folder: str, volume: np.ndarray, names: Sequence[str], positions_z: Sequence[float],
                     spacing_yx: Sequence[float], key: str, modality: str, slice_thickness: float,
                     intercept: float | None = None, patient_id: str = "anon", series_number: int = 1,
                     study_key: str | None = None) -> list[Path]:
        """One DICOM series: slice ``k`` of the (Z, Y, X) stored-value ``volume`` goes to file
        ``names[k]`` at z position ``positions_z[k]`` (identity orientation). ``key`` makes the
        series' UIDs; ``intercept`` adds a CT rescale (value = stored + intercept)."""
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        study_uid = self.uid(study_key or key, "study")
        series_uid = self.uid(key, "series")
        frame_uid = self.uid(study_key or key, "frame")
        signed = np.issubdtype(volume.dtype, np.signedinteger)
        paths = []
        for k, name in enumerate(names):
            sop_uid = self.uid(key, "sop", k)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = modality
            ds.PatientID = patient_id
            ds.PatientName = patient_id
            ds.SeriesNumber = series_number
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [0.0, 0.0, float(positions_z[k])]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [float(spacing_yx[0]), float(spacing_yx[1])]
            ds.SliceThickness = float(slice_thickness)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            if intercept is not None:
                ds.RescaleIntercept = float(intercept)
                ds.RescaleSlope = 1.0
                ds.RescaleType = "HU"
            ds.PixelData = np.ascontiguousarray(volume[k].astype(np.int16 if signed else np.uint16)).tobytes()
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            paths.append(self.bytes(f"{folder}/{name}", buffer.getvalue()))
        return paths

    # ---- breaking files (defects)
    def remove(self, rel: str) -> None:
        self.path(rel).unlink()

    def truncate(self, rel: str, keep: float = 0.5) -> None:
        path = self.path(rel)
        data = path.read_bytes()
        write_bytes(path, data[: max(1, int(len(data) * keep))])

    # ---- result
    def expected(self, entries: Sequence[Entry], defects: Sequence[str]) -> Expected:
        for entry in entries:
            entry.finish()
        files = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        return Expected(self.name, self.folder, self.root, {e.name: e for e in entries}, tuple(defects), files)


def affine_diag(spacing_ijk: Sequence[float], signs: Sequence[int] = (1, 1, 1),
                origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A diagonal NIfTI affine: voxel axis i along x (R), j along y (A), k along z (S), with signs."""
    affine = np.diag([signs[0] * spacing_ijk[0], signs[1] * spacing_ijk[1], signs[2] * spacing_ijk[2], 1.0])
    affine[:3, 3] = origin
    return affine
