"""Ingest into the zarr v3 dataset store: layout, checksums, quarantine of bad input, atomicity."""

import hashlib
import logging
import re
import shutil
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import yaml

import medpipe.data.ingest as ingest
from medpipe import cli
from medpipe.io.quarantine import COLUMNS, read_quarantine
from medpipe.store import DatasetStore, StoreError

CHUNKS = {"chunks_2d": [16, 16], "chunks_3d": [4, 16, 16]}


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_nifti(path, array_zyx, spacing_zyx=(2.5, 0.8, 0.6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    sz, sy, sx = spacing_zyx
    nib.save(nib.Nifti1Image(array_zyx.transpose(2, 1, 0), np.diag([sx, sy, sz, 1.0])), str(path))
    return path


def square_label(shape, value=1):
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(n // 4, n // 2 + 1) for n in shape)] = value
    return label


def grey_image(shape, seed):
    return np.random.default_rng(seed).integers(0, 60000, shape).astype(np.uint16)


@pytest.fixture
def dataset_2d(tmp_path, monkeypatch):
    """Three good 2D cases (16-bit PNG images, 8-bit PNG labels) in the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        iio.imwrite(tmp_path / f"images/p{i}_img.png", grey_image((24, 40), i))
        iio.imwrite(tmp_path / f"labels/p{i}_img.png", square_label((24, 40), value=1 + i % 2))
    spec = {"modality": "xray", "ndim": 2, "images": "images/*", "labels": "labels/*",
            "patient_id": "^(?P<patient>[^_]+)_", "classes": {1: "lung", 2: "heart"}}
    return tmp_path, spec


@pytest.fixture
def dataset_3d(tmp_path, monkeypatch):
    """Two good 3D NIfTI cases with the nnU-Net style ``_0000`` image suffix."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    for i in range(2):
        write_nifti(tmp_path / f"images/p{i}_ct_0000.nii.gz", rng.integers(-1000, 1000, (10, 20, 24)).astype(np.int16))
        write_nifti(tmp_path / f"labels/p{i}_ct.nii.gz", square_label((10, 20, 24), value=3))
    spec = {"modality": "ct", "ndim": 3, "images": "images/*.nii.gz", "labels": "labels/*.nii.gz",
            "case_id": r"^(?P<case>.+?)(_0000)?\.nii\.gz$", "patient_id": "^(?P<patient>[^_]+)_",
            "classes": {1: "liver", 3: "spleen"}}
    return tmp_path, spec


def run_ingest(root, spec, name="ds"):
    report = ingest.ingest_dataset(name, spec, root / f"out/{name}.zarr", root / f"out/{name}.quarantine.tsv", CHUNKS)
    return report, DatasetStore(root / f"out/{name}.zarr"), read_quarantine(root / f"out/{name}.quarantine.tsv")


def test_3d_store_layout_attrs_chunks_and_checksums(dataset_3d):
    root, spec = dataset_3d
    report, store, rows = run_ingest(root, spec)
    assert rows == [] and report.case_ids == ["p0_ct", "p1_ct"]
    assert (root / "out/ds.quarantine.tsv").read_text() == "\t".join(COLUMNS) + "\n"
    assert store.name == "ds" and store.modality == "ct" and store.ndim == 3
    assert store.classes == {1: "liver", 3: "spleen"} and store.case_ids == ["p0_ct", "p1_ct"]
    image = store.image_array("p1_ct")
    assert image.dtype == np.int16 and image.shape == (10, 20, 24) and image.chunks == (4, 16, 16)
    source = nib.load(str(root / "images/p1_ct_0000.nii.gz")).get_fdata().astype(np.int16).transpose(2, 1, 0)
    np.testing.assert_array_equal(store.image("p1_ct"), source)
    label = store.label_array("p1_ct")
    assert label.dtype == np.uint8 and label.chunks == (4, 16, 16)
    np.testing.assert_array_equal(store.label("p1_ct"), square_label((10, 20, 24), value=3))
    info = store.info("p1_ct")
    assert info.patient_id == "p1" and info.modality == "ct" and info.spacing == (2.5, 0.8, 0.6)
    assert info.attrs["orientation"] == "RAS" and info.attrs["shape"] == [10, 20, 24]
    assert info.attrs["dtype"] == "int16"
    assert info.attrs["source"] == {"image": "images/p1_ct_0000.nii.gz", "label": "labels/p1_ct.nii.gz"}
    assert info.attrs["sha256"] == {"image": sha(root / "images/p1_ct_0000.nii.gz"),
                                    "label": sha(root / "labels/p1_ct.nii.gz")}
    assert not any(p.name.startswith("ds.zarr.") for p in (root / "out").iterdir())


def test_2d_store_clips_chunks_and_keeps_uint16(dataset_2d):
    root, spec = dataset_2d
    _, store, rows = run_ingest(root, spec)
    assert rows == [] and store.case_ids == ["p0_img", "p1_img", "p2_img"]
    image = store.image_array("p2_img")
    assert image.dtype == np.uint16 and image.chunks == (16, 16)
    np.testing.assert_array_equal(image[...], grey_image((24, 40), 2))
    info = store.info("p2_img")
    assert info.spacing == (1.0, 1.0) and info.attrs["orientation"] is None and info.patient_id == "p2"
    big = ingest.ingest_dataset("big", spec, root / "big.zarr", root / "big.tsv", {"chunks_2d": [512, 512],
                                                                                 "chunks_3d": [4, 4, 4]})
    assert DatasetStore(big.store).image_array("p0_img").chunks == (24, 40)  # clipped to the shape


def test_rgb_jpeg_images_and_uint16_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rgb = np.zeros((20, 36, 3), np.uint8)
    rgb[..., 1] = 150
    iio.imwrite(tmp_path / "img/a.jpg", rgb, quality=95)
    iio.imwrite(tmp_path / "lab/a.png", square_label((20, 36)).astype(np.uint16) * 300)
    spec = {"modality": "dermoscopy", "ndim": 2, "images": "img/*.jpg", "labels": "lab/*.png",
            "classes": {300: "lesion"}}
    _, store, rows = run_ingest(tmp_path, spec)
    assert rows == [] and store.case_ids == ["a"] and store.info("a").patient_id == "a"
    assert store.image_array("a").shape == (20, 36, 3) and store.image_array("a").chunks == (16, 16, 3)
    assert store.label_array("a").dtype == np.uint16 and set(np.unique(store.label("a"))) == {0, 300}


def break_case(root, kind):
    """Add one bad case ``p9_img`` (or damage p0) of the given kind to the 2D dataset; return its case id."""
    images, labels = root / "images", root / "labels"
    good = grey_image((24, 40), 9)
    if kind == "corrupt":
        (images / "p9_img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
        iio.imwrite(labels / "p9_img.png", square_label((24, 40)))
    elif kind == "shape":
        iio.imwrite(images / "p9_img.png", good)
        iio.imwrite(labels / "p9_img.png", square_label((24, 41)))
    elif kind == "empty":
        iio.imwrite(images / "p9_img.png", good)
        iio.imwrite(labels / "p9_img.png", np.zeros((24, 40), np.uint8))
    elif kind == "unknown_class":
        iio.imwrite(images / "p9_img.png", good)
        iio.imwrite(labels / "p9_img.png", square_label((24, 40), value=7))
    elif kind == "no_label":
        iio.imwrite(images / "p9_img.png", good)
    elif kind == "no_image":
        iio.imwrite(labels / "p9_img.png", square_label((24, 40)))
    elif kind == "duplicate":
        iio.imwrite(images / "p9_img.png", good)
        iio.imwrite(images / "p9_img.tif", good)
        iio.imwrite(labels / "p9_img.png", square_label((24, 40)))
    elif kind == "unknown_extension":
        (images / "p9_img.xyz").write_bytes(b"not an image")
        iio.imwrite(labels / "p9_img.png", square_label((24, 40)))
    return "p9_img"


@pytest.mark.parametrize("kind, problem", [
    ("corrupt", r"images/p9_img\.png: not a readable image"),
    ("shape", r"image/label shape mismatch: image \(24, 40\), label \(24, 41\)"),
    ("empty", r"labels/p9_img\.png: empty label \(no foreground voxel\)"),
    ("unknown_class", r"labels/p9_img\.png: label values not in classes \[1, 2\]: \[7\]"),
    ("no_label", r"images/p9_img\.png: image without label"),
    ("no_image", r"labels/p9_img\.png: label without image"),
    ("duplicate", r"duplicate case id 'p9_img': 2 image files"),
    ("unknown_extension", r"images/p9_img\.xyz: unknown image file extension"),
])
def test_bad_case_is_quarantined_and_the_rest_goes_on(dataset_2d, caplog, kind, problem):
    root, spec = dataset_2d
    case_id = break_case(root, kind)
    with caplog.at_level(logging.WARNING, logger="medpipe.ingest"):
        report, store, rows = run_ingest(root, spec)
    assert store.case_ids == ["p0_img", "p1_img", "p2_img"] == report.case_ids
    assert not (root / f"out/ds.zarr/cases/{case_id}").exists()
    assert len(rows) == 1 and rows[0].dataset == "ds" and rows[0].case_id == case_id
    assert rows[0].image or rows[0].label
    assert re.search(problem, rows[0].problem), rows[0].problem
    assert any(re.search(problem, record.getMessage()) for record in caplog.records)


def test_non_finite_voxel_in_a_later_chunk_is_found(dataset_3d):
    root, spec = dataset_3d
    volume = np.zeros((10, 20, 24), np.float32)
    volume[9, 19, 23] = np.nan  # in the last chunk only
    write_nifti(root / "images/p5_ct_0000.nii.gz", volume)
    write_nifti(root / "labels/p5_ct.nii.gz", square_label((10, 20, 24)))
    _, store, rows = run_ingest(root, spec)
    assert store.case_ids == ["p0_ct", "p1_ct"]
    assert [r.case_id for r in rows] == ["p5_ct"]
    assert "images/p5_ct_0000.nii.gz: image has 1 non-finite voxels" in rows[0].problem


def test_truncated_nifti_is_quarantined(dataset_3d):
    root, spec = dataset_3d
    path = write_nifti(root / "images/p7_ct_0000.nii.gz", np.ones((10, 20, 24), np.int16))
    write_nifti(root / "labels/p7_ct.nii.gz", square_label((10, 20, 24)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    _, store, rows = run_ingest(root, spec)
    assert store.case_ids == ["p0_ct", "p1_ct"]
    assert [r.case_id for r in rows] == ["p7_ct"] and "p7_ct_0000.nii.gz" in rows[0].problem


def test_case_regex_mismatch_is_quarantined(dataset_3d):
    root, spec = dataset_3d
    write_nifti(root / "images/odd.nii", np.ones((2, 2, 2), np.int16))
    _, store, rows = run_ingest(root, {**spec, "images": "images/*"})
    assert store.case_ids == ["p0_ct", "p1_ct"]
    assert rows[0].image == "images/odd.nii" and "does not match the case_id regex" in rows[0].problem


def write_config(root, spec, name="ds"):
    (root / "config.yaml").write_text(yaml.safe_dump({"datasets": {name: spec}}))
    return root / "config.yaml"


def test_cli_all_cases_quarantined_fails_unless_allowed_then_writes_an_empty_complete_store(dataset_2d, caplog):
    root, spec = dataset_2d
    for path in (root / "labels").iterdir():
        iio.imwrite(path, np.zeros((24, 40), np.uint8))
    config = write_config(root, {**spec, "classes": {"1": "lung", "2": "heart"}})
    args = ["ingest", "--config", str(config), "--dataset", "ds", "--out", "out/ds.zarr",
            "--quarantine", "out/ds.quarantine.tsv"]
    assert cli.main(args) == 2 and not (root / "out/ds.zarr").exists()  # tests/test_missing_cases.py
    with caplog.at_level(logging.WARNING):
        code = cli.main([*args, "--allow-empty"])
    assert code == 0
    store = DatasetStore(root / "out/ds.zarr")
    assert store.case_ids == [] and store.classes == {1: "lung", 2: "heart"}
    assert len(read_quarantine(root / "out/ds.quarantine.tsv")) == 3
    assert any("no case could be ingested" in r.getMessage() for r in caplog.records)


def test_cli_errors_on_globs_matching_nothing_and_unknown_dataset(dataset_2d):
    root, spec = dataset_2d
    config = write_config(root, {**spec, "images": "nothing/*.png", "labels": "nothing/*.png"})
    args = ["ingest", "--config", str(config), "--out", "out/ds.zarr", "--quarantine", "out/q.tsv"]
    assert cli.main(args + ["--dataset", "ds"]) == 2
    assert cli.main(args + ["--dataset", "other"]) == 2
    assert not (root / "out/ds.zarr").exists()


def interrupt_on_second_case(monkeypatch):
    real = ingest._ingest_case
    calls = []

    def flaky(cases_group, case, *args):
        calls.append(case.case_id)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(cases_group, case, *args)

    monkeypatch.setattr(ingest, "_ingest_case", flaky)


def test_interrupted_ingest_keeps_the_old_store_and_leaves_no_partial(dataset_2d, monkeypatch):
    root, spec = dataset_2d
    run_ingest(root, {**spec, "images": "images/p0_*"})  # an old, complete store with only p0
    interrupt_on_second_case(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(root, spec)
    assert DatasetStore(root / "out/ds.zarr").case_ids == ["p0_img"]
    assert sorted(p.name for p in (root / "out").iterdir()) == ["ds.quarantine.tsv", "ds.zarr"]


def test_killed_ingest_leaves_only_an_incomplete_partial_store(dataset_2d, monkeypatch):
    root, spec = dataset_2d
    interrupt_on_second_case(monkeypatch)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # like SIGKILL: no cleanup runs
    with pytest.raises(KeyboardInterrupt):
        run_ingest(root, spec)
    assert not (root / "out/ds.zarr").exists()
    (partial,) = (root / "out").glob("ds.zarr.partial-*")
    with pytest.raises(StoreError, match="did not complete"):
        DatasetStore(partial)


def test_volume_is_read_chunk_wise_never_whole(dataset_3d, monkeypatch):
    """Every read from the NIfTI proxy is one slab of chunks_3d[0] z slices: memory is bounded by it."""
    root, spec = dataset_3d
    volume = np.random.default_rng(3).integers(-1000, 1000, (10, 20, 24)).astype(np.int16)
    write_nifti(root / "images/p0_ct_0000.nii.gz", volume)
    reads = []
    real_getitem = nib.arrayproxy.ArrayProxy.__getitem__

    def recording_getitem(self, key):
        block = real_getitem(self, key)
        reads.append(block.shape)
        return block

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", recording_getitem)
    _, store, _ = run_ingest(root, spec)
    data_reads = [shape for shape in reads if np.prod(shape) > 1]  # skip the one-voxel dtype probe
    # 2 cases x (image + label) x 3 slabs of <= 4 z slices, each slab (x, y, z) = (24, 20, <=4)
    assert len(data_reads) == 2 * 2 * 3
    assert all(shape[:2] == (24, 20) and shape[2] <= CHUNKS["chunks_3d"][0] for shape in data_reads)
    np.testing.assert_array_equal(store.image("p0_ct"), volume)


def test_dicom_series_folders_ingest_with_nifti_labels(tmp_path, monkeypatch):
    from medpipe.files import sha256_of

    from test_readers import make_ct_series

    monkeypatch.chdir(tmp_path)
    source = make_ct_series(tmp_path / "dicom/pat1_ct", n_slices=3)
    write_nifti(tmp_path / "labels/pat1_ct.nii.gz", square_label((3, 128, 128), value=1))
    spec = {"modality": "ct", "ndim": 3, "images": "dicom/*", "labels": "labels/*.nii.gz",
            "patient_id": "^(?P<patient>[^_]+)_", "classes": {1: "organ"}}
    _, store, rows = run_ingest(tmp_path, spec)
    assert rows == [] and store.case_ids == ["pat1_ct"]
    info = store.info("pat1_ct")
    assert info.patient_id == "pat1" and info.attrs["orientation"] == "LPS"
    assert info.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    assert info.attrs["sha256"]["image"] == sha256_of(tmp_path / "dicom/pat1_ct")
    expected = source.pixel_array.astype(np.int32) + int(source.RescaleIntercept) + 2
    np.testing.assert_array_equal(store.image("pat1_ct")[2], expected)


@pytest.mark.parametrize("block, expected", [
    (np.array([[0, 1], [2, 0]], np.uint8), (True, set())),
    (np.array([[0, 0], [0, 0]], np.uint8), (False, set())),
    (np.array([[0, 7], [5, 1]], np.uint8), (True, {5, 7})),
    (np.array([0.0, 1.0, 2.0], np.float32), (True, set())),
    (np.array([0.0, 0.5, 2.0], np.float32), (True, {0.5})),
    (np.array([0.0, -3.0], np.int16), (True, {-3})),
    (np.array([0, 60000, 1], np.uint16), (True, {60000})),  # wide range: the np.unique path
])
def test_label_summary_hand_computed(block, expected):
    assert ingest.label_summary(block, {1, 2}) == expected
    nan_result = ingest.label_summary(np.array([0.0, np.nan], np.float64), {1})
    assert nan_result[0] and len(nan_result[1]) == 1 and np.isnan(next(iter(nan_result[1])))
    assert ingest.count_non_finite(np.array([1.0, np.inf, -np.inf, np.nan])) == 3
