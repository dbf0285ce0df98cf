"""Read one raw image file (or DICOM series folder) into an array in medpipe's axis order.

Every reader returns ``(array, ImageMeta)`` with the array in the order of the data contract
(``docs/data-format.md``): (Y, X) grey, (Y, X, C) colour, (Z, Y, X) volumes. NIfTI volumes come
back as a lazy dask array over nibabel's ``dataobj`` proxy, so ingest can stream a volume that does
not fit in memory slab by slab; the other formats are small in practice and are read eagerly. Any
failure to read is raised as :class:`ReadError` whose message starts with the file's path, so the
caller can quarantine exactly that case and go on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np

from medpipe.errors import MedpipeError
from medpipe.io.detached import DetachedDataError, detached_files

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
IMAGEIO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pbm")
TIFF_EXTENSIONS = (".tif", ".tiff")
ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
NUMPY_EXTENSIONS = (".npy",)
KNOWN_EXTENSIONS = NIFTI_EXTENSIONS + IMAGEIO_EXTENSIONS + TIFF_EXTENSIONS + ITK_EXTENSIONS + NUMPY_EXTENSIONS

# NIfTI xyz units -> factor to millimetres (``unknown`` is taken as mm, as most tools do)
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
DEFAULT_SLAB = 32  # z slices per lazy NIfTI block when the caller gives no chunks

_token = itertools.count()


class ReadError(MedpipeError, RuntimeError):
    """A file cannot be read as an image; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageMeta:
    """What a reader knows about the array besides its values.

    ``spacing`` follows the spatial axes of the array (mm; 1.0 where the format has none).
    ``orientation`` holds the source's axis codes in the source's own x, y, z order, in the
    nibabel convention (the direction each voxel axis increases towards: ``"RAS"`` for a canonical
    NIfTI, ``"LPS"`` for an ITK/DICOM image with identity direction); ``None`` for 2D images.
    ``colour`` is true when the last axis holds channels (2D colour images only).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    spacing: tuple[float, ...]
    orientation: str | None
    colour: bool = False

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:-1] if self.colour else self.shape


def extension_of(path: str | Path) -> str | None:
    """The recognised (possibly compound) extension of ``path``, lower case, or None."""
    name = Path(path).name.lower()
    return next((ext for ext in KNOWN_EXTENSIONS if name.endswith(ext)), None)


def base_name(path: str | Path) -> str:
    """The file name without its extension(s): the default case id.

    A recognised extension is removed as a whole (``a.nii.gz`` -> ``a``); for other names
    everything from the first dot on is removed. Folders (DICOM series) keep their full name,
    because series folders are often named by dotted UIDs.
    """
    path = Path(path)
    if path.is_dir():
        return path.name
    ext = extension_of(path)
    if ext is not None:
        return path.name[: -len(ext)]
    stem = path.name.lstrip(".").split(".", 1)[0]
    return stem or path.name


def is_lazy(array) -> bool:
    return isinstance(array, da.Array)


#: the largest image or volume (in bytes, as declared by its header) a reader accepts; None: the
#: schema's default of ``ingest.max_image_bytes`` (ingest sets the configured value)
_max_image_bytes: int | None = None


def set_max_image_bytes(limit: int | None) -> None:
    """Cap every reader at ``limit`` bytes per image (None: the schema's default)."""
    global _max_image_bytes
    _max_image_bytes = None if limit is None else int(limit)


def max_image_bytes() -> int:
    if _max_image_bytes is None:
        from medpipe.config import schema

        return int(schema()["properties"]["ingest"]["properties"]["max_image_bytes"]["default"])
    return _max_image_bytes


def check_declared_size(path, shape, dtype) -> None:
    """Refuse an image whose header declares more than :func:`max_image_bytes`, before any pixel is
    allocated (a 5 MB tiled TIFF may declare 50,000 x 50,000 pixels)."""
    size = int(np.prod([int(n) for n in shape], dtype=object)) * np.dtype(dtype).itemsize
    if size > max_image_bytes():
        raise ReadError(f"{path}: declares {tuple(int(n) for n in shape)} {np.dtype(dtype)} = {size / 2**30:.2f} GiB, "
                        f"more than ingest.max_image_bytes ({max_image_bytes() / 2**30:.2f} GiB)")


def read_image(path: str | Path, chunks: tuple[int, ...] | None = None):
    """Open ``path`` and return ``(array, ImageMeta)``.

    ``chunks`` (array axis order; None or -1 = the whole axis) sets the block shape of the lazy
    array returned for NIfTI volumes; the default is slabs of 32 whole z slices, which are contiguous on disk.
    A folder is read as one DICOM series. An unknown extension raises :class:`ReadError` naming the file.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if not path.exists():
        raise ReadError(f"{path}: file does not exist")
    ext = extension_of(path)
    if ext in NIFTI_EXTENSIONS:
        return _read_nifti(path, chunks)
    if ext in IMAGEIO_EXTENSIONS:
        return _read_imageio(path)
    if ext in TIFF_EXTENSIONS:
        return _read_tiff(path)
    if ext in ITK_EXTENSIONS:
        return _read_itk_file(path)
    if ext in NUMPY_EXTENSIONS:
        return _read_npy(path, chunks)
    raise ReadError(
        f"{path}: unknown image file extension (known: {', '.join(KNOWN_EXTENSIONS)}, or a DICOM series folder)"
    )


# --------------------------------------------------------------------------------------------- NIfTI


class _NiftiZYX:
    """Array-like view of a nibabel proxy with the spatial axes reversed (x, y, z -> z, y, x).

    Indexing reads only the requested block from disk; read failures (e.g. a truncated file)
    become :class:`ReadError` naming the file, also when dask triggers them later.
    """

    def __init__(self, proxy, path: Path, n_spatial: int):
        self.proxy = proxy
        self.path = path
        self.ndim = n_spatial
        self.shape = tuple(int(n) for n in reversed(proxy.shape[:n_spatial]))
        self._extra = (0,) * (len(proxy.shape) - n_spatial)
        self.dtype = self._read((slice(0, 1),) * n_spatial).dtype

    def _read(self, key_xyz: tuple) -> np.ndarray:
        try:
            return np.asarray(self.proxy[key_xyz + self._extra])
        except Exception as exc:  # nibabel/gzip/zlib raise many types for damaged data
            raise ReadError(f"{self.path}: cannot read voxel data ({type(exc).__name__}: {exc})") from exc

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        drop = [axis for axis, k in enumerate(key) if isinstance(k, (int, np.integer))]
        key = tuple(slice(k, k + 1) if axis in drop else k for axis, k in enumerate(key))
        block = self._read(tuple(reversed(key))).transpose(tuple(reversed(range(self.ndim))))
        block = block.astype(self.dtype, copy=False)
        return block[tuple(0 if axis in drop else slice(None) for axis in range(self.ndim))]


def _read_nifti(path: Path, chunks):
    import nibabel as nib

    gz = path.name.lower().endswith(".gz")
    try:
        # keep a gzip stream open so consecutive slabs continue decompressing where the last ended
        img = nib.load(str(path), mmap=False, keep_file_open=gz)
        shape = img.dataobj.shape
    except Exception as exc:
        raise ReadError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    n_spatial = min(len(shape), 3)
    if any(n != 1 for n in shape[3:]):
        raise ReadError(f"{path}: {len(shape)}D NIfTI with shape {tuple(shape)}; only single volumes are supported")
    if n_spatial < 2:
        raise ReadError(f"{path}: NIfTI with shape {tuple(shape)} is not an image")
    check_declared_size(path, shape, img.get_data_dtype())
    source = _NiftiZYX(img.dataobj, path, n_spatial)
    unit = img.header.get_xyzt_units()[0]
    # zooms are float32 in the header: keep their shortest decimal form (0.7, not 0.699999988)
    zooms = [float(str(np.float32(z))) * _UNIT_TO_MM.get(unit, 1.0) for z in img.header.get_zooms()[:n_spatial]]
    spacing = tuple(reversed(zooms))
    orientation = "".join(nib.aff2axcodes(img.affine)) if n_spatial == 3 else None
    if chunks is None:
        chunks = (DEFAULT_SLAB,) + source.shape[1:] if n_spatial == 3 else source.shape
    array = da.from_array(
        source,
        chunks=tuple(n if c in (None, -1) else max(1, min(c, n)) for c, n in zip(chunks, source.shape)),
        meta=np.empty((0,) * n_spatial, dtype=source.dtype),
        name=f"nifti-{next(_token)}-{path.name}",
        asarray=False,
    )
    meta = ImageMeta(shape=source.shape, dtype=source.dtype, spacing=spacing, orientation=orientation)
    return array, meta


# --------------------------------------------------------------------------- PNG / JPG / TIFF (2D)


def _drop_constant_alpha(array: np.ndarray) -> np.ndarray:
    """Grey+alpha or RGBA with a constant alpha carries no information: drop the alpha channel."""
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        alpha = array[..., -1]
        if alpha.min() == alpha.max():
            array = array[..., :-1]
            if array.shape[-1] == 1:
                array = array[..., 0]
    return array


def _no_bool(array: np.ndarray) -> np.ndarray:
    """1-bit images (e.g. a mode "1" PNG mask) come back as bool: store them as uint8 0/1."""
    return array.astype(np.uint8) if array.dtype == bool else array


def _plain_meta(array: np.ndarray, colour: bool) -> ImageMeta:
    n_spatial = array.ndim - 1 if colour else array.ndim
    return ImageMeta(
        shape=tuple(array.shape), dtype=array.dtype, spacing=(1.0,) * n_spatial, orientation=None, colour=colour
    )


def _read_imageio(path: Path):
    import imageio.v3 as iio

    try:
        props = iio.improps(path)
    except Exception as exc:
        raise ReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    check_declared_size(path, props.shape, props.dtype)
    try:
        array = np.asarray(iio.imread(path))
    except Exception as exc:
        raise ReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    array = _no_bool(_drop_constant_alpha(array))
    if array.ndim not in (2, 3):
        raise ReadError(f"{path}: image with shape {array.shape} is neither grey (Y, X) nor colour (Y, X, C)")
    return array, _plain_meta(array, colour=array.ndim == 3)


def _read_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            check_declared_size(path, series.shape, series.dtype)
            array = series.asarray()
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"{path}: not a readable TIFF file ({type(exc).__name__}: {exc})") from exc
    colour = axes.endswith("S")  # tifffile names the samples-per-pixel axis S
    if colour:
        array = _drop_constant_alpha(array)
        colour = array.ndim == 3
    array = _no_bool(array)
    if array.ndim not in (2, 3):
        raise ReadError(f"{path}: TIFF with shape {array.shape} (axes {axes}) is not a single image or volume")
    return array, _plain_meta(array, colour=colour)


# --------------------------------------------------------------------------- ITK: MHA/NRRD/DICOM


def _itk_orientation(image) -> str:
    """Axis codes of an ITK image (direction cosines in LPS) in the nibabel convention."""
    import nibabel as nib

    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction  # LPS world -> RAS world
    return "".join(nib.aff2axcodes(affine))


def _from_itk(image, path: Path, squeeze_single_slice: bool):
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    colour = image.GetNumberOfComponentsPerPixel() > 1
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    dim = image.GetDimension()
    if squeeze_single_slice and dim == 3 and image.GetSize()[2] == 1:
        array, spacing, dim = array[0], spacing[1:], 2
    if colour and dim == 3:
        raise ReadError(f"{path}: multi-component volumes are not supported")
    if dim not in (2, 3):
        raise ReadError(f"{path}: {dim}D image is not supported")
    orientation = _itk_orientation(image) if dim == 3 else None
    meta = ImageMeta(shape=tuple(array.shape), dtype=array.dtype, spacing=spacing, orientation=orientation,
                     colour=colour)
    return array, meta


def _read_itk_file(path: Path):
    import SimpleITK as sitk

    try:
        detached_files(path)  # a header's data file must stay in its folder
    except DetachedDataError as exc:
        raise ReadError(str(exc)) from exc
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        declared = (*reader.GetSize(), reader.GetNumberOfComponents())
        dtype = sitk.GetArrayViewFromImage(sitk.Image(1, 1, reader.GetPixelID())).dtype
    except Exception as exc:
        raise ReadError(f"{path}: not readable by SimpleITK ({type(exc).__name__}: {exc})") from exc
    check_declared_size(path, declared, dtype)
    try:
        image = reader.Execute()
    except Exception as exc:
        raise ReadError(f"{path}: not readable by SimpleITK ({type(exc).__name__}: {exc})") from exc
    # a single DICOM file is one slice: a 2D image, not a one-slice volume
    return _from_itk(image, path, squeeze_single_slice=path.name.lower().endswith(".dcm"))


def _read_dicom_series(path: Path):
    """Read the one DICOM series in folder ``path`` (slices sorted by position by GDCM)."""
    import SimpleITK as sitk

    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    except Exception as exc:
        raise ReadError(f"{path}: cannot scan folder for DICOM series ({exc})") from exc
    if not series_ids:
        raise ReadError(f"{path}: folder holds no readable DICOM series")
    if len(series_ids) > 1:
        raise ReadError(f"{path}: folder holds {len(series_ids)} DICOM series; expected exactly one per folder")
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series_ids[0])
    except Exception as exc:
        raise ReadError(f"{path}: cannot list the DICOM series ({type(exc).__name__}: {exc})") from exc
    # GDCM leaves out files it cannot parse: a damaged slice would silently shorten the volume
    members = {Path(name).resolve() for name in names}
    others = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.resolve() not in members)
    if others:
        raise ReadError(f"{path}: {len(others)} file(s) of the folder are not readable slices of its DICOM "
                        f"series (first: {others[0]})")
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        image = reader.Execute()
    except Exception as exc:
        raise ReadError(f"{path}: cannot read DICOM series ({type(exc).__name__}: {exc})") from exc
    return _from_itk(image, path, squeeze_single_slice=False)


# --------------------------------------------------------------------------------------------- NumPy


def _read_npy(path: Path, chunks):
    """A ``.npy`` array as stored: (Y, X) or (Z, Y, X), memory-mapped and read lazily in z slabs.

    ``.npy`` carries no geometry: spacing 1.0, orientation null. Object arrays are refused
    (``allow_pickle=False``: a pickle can run code).
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise ReadError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise ReadError(f"{path}: .npy array of shape {array.shape} and dtype {array.dtype} is not a 2D/3D image")
    check_declared_size(path, array.shape, array.dtype)
    if array.dtype == bool:
        array = np.asarray(array, dtype=np.uint8)
    if chunks is None:
        chunks = (DEFAULT_SLAB,) + array.shape[1:] if array.ndim == 3 else array.shape
    lazy = da.from_array(
        array,
        chunks=tuple(n if c in (None, -1) else max(1, min(c, n)) for c, n in zip(chunks, array.shape)),
        name=f"npy-{next(_token)}-{path.name}",
    )
    meta = ImageMeta(shape=tuple(array.shape), dtype=array.dtype, spacing=(1.0,) * array.ndim, orientation=None)
    return lazy, meta
