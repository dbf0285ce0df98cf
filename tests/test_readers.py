"""Round trips of every raw-file reader on small files written by the test itself."""

import hashlib
import shutil

import dask.array as da
import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medpipe.files import sha256_of
from medpipe.io import ReadError, base_name, read_image

RNG = np.random.default_rng(0)


def write_nifti(path, array_zyx, spacing_zyx, affine_signs=(1, 1, 1)):
    sz, sy, sx = spacing_zyx
    affine = np.diag([affine_signs[0] * sx, affine_signs[1] * sy, affine_signs[2] * sz, 1.0])
    nib.save(nib.Nifti1Image(array_zyx.transpose(2, 1, 0), affine), str(path))
    return path


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_is_lazy_zyx_with_anisotropic_spacing(tmp_path, dtype, suffix):
    volume = RNG.normal(0, 300, (7, 9, 11)).astype(dtype)
    path = write_nifti(tmp_path / f"ct{suffix}", volume, (3.0, 0.7, 0.5))
    array, meta = read_image(path, chunks=(2, None, None))
    assert isinstance(array, da.Array)
    assert array.chunks == ((2, 2, 2, 1), (9,), (11,))
    assert meta.shape == (7, 9, 11) and meta.dtype == np.dtype(dtype)
    assert meta.spacing == (3.0, 0.7, 0.5)
    assert meta.orientation == "RAS" and not meta.colour
    np.testing.assert_array_equal(array.compute(), volume)


def test_nifti_orientation_codes_follow_the_affine(tmp_path):
    path = write_nifti(tmp_path / "flipped.nii", np.zeros((2, 3, 4), np.int16), (1, 1, 1), affine_signs=(-1, 1, -1))
    assert read_image(path)[1].orientation == "LAI"


def test_nifti_truncated_data_fails_when_read_naming_the_file(tmp_path):
    path = write_nifti(tmp_path / "cut.nii", RNG.integers(0, 100, (8, 16, 16)).astype(np.int16), (1, 1, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    array, _ = read_image(path, chunks=(2, None, None))
    with pytest.raises(ReadError, match="cut.nii: cannot read voxel data"):
        array.compute()


def test_png_16bit_grey(tmp_path):
    image = (np.arange(30 * 40, dtype=np.uint16) * 53).reshape(30, 40)
    iio.imwrite(tmp_path / "x.png", image)
    array, meta = read_image(tmp_path / "x.png")
    assert array.dtype == np.uint16 and meta.shape == (30, 40) and meta.spacing == (1.0, 1.0)
    assert meta.orientation is None and not meta.colour
    np.testing.assert_array_equal(array, image)


def test_rgb_png_kept_and_constant_alpha_dropped(tmp_path):
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    iio.imwrite(tmp_path / "rgba.png", np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1))
    varying = np.concatenate([rgb, RNG.integers(0, 256, (20, 30, 1), dtype=np.uint8)], axis=-1)
    iio.imwrite(tmp_path / "rgba_varying.png", varying)
    for name in ("rgb.png", "rgba.png"):
        array, meta = read_image(tmp_path / name)
        assert meta.colour and meta.shape == (20, 30, 3) and meta.spatial_shape == (20, 30)
        np.testing.assert_array_equal(array, rgb)
    array, meta = read_image(tmp_path / "rgba_varying.png")
    assert meta.shape == (20, 30, 4)
    np.testing.assert_array_equal(array, varying)


def test_rgb_jpeg(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[8:24, 8:40, 2] = 120
    iio.imwrite(tmp_path / "skin.jpg", rgb, quality=95)
    array, meta = read_image(tmp_path / "skin.jpg")
    assert meta.colour and array.shape == (32, 48, 3) and array.dtype == np.uint8
    assert np.abs(array.astype(int) - rgb).mean() < 3  # JPEG is lossy; the reader must not be


def test_tiff_volume_and_rgb(tmp_path):
    volume = RNG.integers(0, 4000, (5, 12, 14)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", volume)
    array, meta = read_image(tmp_path / "stack.tif")
    assert meta.shape == (5, 12, 14) and not meta.colour
    np.testing.assert_array_equal(array, volume)
    rgb = RNG.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    array, meta = read_image(tmp_path / "rgb.tiff")
    assert meta.colour and meta.spatial_shape == (12, 14)
    np.testing.assert_array_equal(array, rgb)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_round_trip(tmp_path, suffix):
    volume = RNG.integers(-1000, 1000, (4, 6, 8)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.5, 0.7, 3.0))  # ITK order x, y, z
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    array, meta = read_image(tmp_path / f"v{suffix}")
    assert meta.spacing == (3.0, 0.7, 0.5) and meta.orientation == "LPS" and meta.dtype == np.int16
    np.testing.assert_array_equal(array, volume)


def test_real_pydicom_files_read_as_2d_with_modality_lut():
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    array, meta = read_image(get_testdata_file("CT_small.dcm"))
    assert meta.shape == (128, 128) and meta.spacing == pytest.approx((0.661468, 0.661468))
    np.testing.assert_array_equal(array,
                                  ct.pixel_array.astype(np.int32) * int(ct.RescaleSlope) + int(ct.RescaleIntercept))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    array, meta = read_image(get_testdata_file("MR_small.dcm"))
    assert meta.shape == (64, 64) and meta.spacing == pytest.approx((0.3125, 0.3125))
    np.testing.assert_array_equal(array, mr.pixel_array)


def make_ct_series(folder, n_slices=4, z_step=5.0):
    """A DICOM series from pydicom's CT_small.dcm: slice i is shifted by i*z_step mm and by +i in value."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid(entropy_srcs=["medpipe-test-series"])
    for i in range(n_slices):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # fresh: Dataset.copy() shares elements
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["medpipe-test-slice", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in source.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + i * z_step]
        ds.SliceLocation = z + i * z_step
        ds.PixelData = (source.pixel_array + i).astype(source.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"slice_{n_slices - i:03d}.dcm")  # file names in reverse slice order
    return source


def test_dicom_series_folder_is_sorted_by_position(tmp_path):
    source = make_ct_series(tmp_path / "series1")
    array, meta = read_image(tmp_path / "series1")
    assert meta.shape == (4, 128, 128) and meta.orientation == "LPS"
    assert meta.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    hu = source.pixel_array.astype(np.int32) + int(source.RescaleIntercept)
    for i in range(4):
        np.testing.assert_array_equal(array[i], hu + i)


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "b.dcm")
    with pytest.raises(ReadError, match=r"mixed: folder holds 2 DICOM series"):
        read_image(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReadError, match="no readable DICOM series"):
        read_image(tmp_path / "empty")


def test_dicom_series_with_a_damaged_slice_is_refused_not_shortened(tmp_path):
    """GDCM leaves out a file it cannot parse; the volume must not silently lose that slice."""
    make_ct_series(tmp_path / "s", n_slices=3)
    for path in sorted((tmp_path / "s").iterdir()):  # any extension (Duke: .dicom)
        path.rename(path.with_suffix(".dicom"))
    assert read_image(tmp_path / "s")[1].shape == (3, 128, 128)
    (tmp_path / "s" / ".DS_Store").write_bytes(b"x")  # hidden files are not slices
    assert read_image(tmp_path / "s")[1].shape == (3, 128, 128)
    damaged = sorted((tmp_path / "s").glob("*.dicom"))[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(ReadError, match=r"1 file\(s\) of the folder are not readable slices .*slice_002\.dicom"):
        read_image(tmp_path / "s")


def test_npy_pgm_and_one_bit_png(tmp_path):
    volume = RNG.integers(-100, 100, (3, 4, 5)).astype(np.int16)
    np.save(tmp_path / "v.npy", volume)
    array, meta = read_image(tmp_path / "v.npy", chunks=(2, None, None))
    assert isinstance(array, da.Array) and array.chunks[0] == (2, 1) and meta.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(array.compute(), volume)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReadError, match=r"o\.npy"):
        read_image(tmp_path / "o.npy")
    from PIL import Image

    grey = RNG.integers(0, 256, (6, 7)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.pgm")
    np.testing.assert_array_equal(read_image(tmp_path / "g.pgm")[0], grey)
    Image.fromarray(grey > 128).convert("1").save(tmp_path / "m.png")
    mask, _ = read_image(tmp_path / "m.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (grey > 128).astype(np.uint8))


def test_unknown_extension_and_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(ReadError, match=r"notes\.xyz: unknown image file extension"):
        read_image(tmp_path / "notes.xyz")
    for name in ("broken.png", "broken.nii.gz", "broken.mha", "broken.tif"):
        (tmp_path / name).write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
        with pytest.raises(ReadError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    with pytest.raises(ReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_base_name_strips_the_whole_extension(tmp_path):
    assert base_name("a/case_01.nii.gz") == "case_01"
    assert base_name("a/case.v2.png") == "case.v2"
    assert base_name("a/case_01.raw.bin") == "case_01"
    (tmp_path / "1.2.840.1").mkdir()
    assert base_name(tmp_path / "1.2.840.1") == "1.2.840.1"


def test_sha256_of_file_and_series_folder(tmp_path):
    data = RNG.integers(0, 256, 10_000_000, dtype=np.uint8).tobytes()  # > one 4 MiB block
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_of(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    make_ct_series(tmp_path / "s", n_slices=2)
    before = sha256_of(tmp_path / "s")
    assert before == sha256_of(tmp_path / "s")
    first = sorted((tmp_path / "s").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-1] + b"\x01")
    assert sha256_of(tmp_path / "s") != before
