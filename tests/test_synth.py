"""Tests of ``medpipe synth``: file formats and dtypes per kind, label content (classes, instances,
tiny objects, touching classes), layout matching the demo config, determinism, and errors."""

from __future__ import annotations

import fnmatch
import gzip
import json
import re
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from medpipe.cli import main
from medpipe.synth import KINDS, SynthError, generate_dataset
from medpipe.synth.mri import bias_field
from medpipe.synth.shapes import image_rng, is_separated, keep_largest, patient_rng
from medpipe.synth.ultrasound import speckle
from medpipe.synth.writers import nifti_gz_bytes

# small but valid sizes (the kinds' minimum sizes), 3 patients x 2 images each
SIZES = {kind: spec.min_size for kind, spec in KINDS.items()}
PATIENTS, IMAGES = 3, 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    for kind in KINDS:
        generate_dataset(root / kind, kind, seed=7, patients=PATIENTS, images_per_patient=IMAGES, size=SIZES[kind])
    return {kind: root / kind for kind in KINDS}


def read_pairs(kind: str, folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(case, image, label) with volumes as (z, y, x), read with the ordinary readers."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for entry in manifest["files"]:
        image_path, label_path = folder / entry["image"], folder / entry["label"]
        if KINDS[kind].ndim == 3:
            image = np.asarray(nib.load(image_path).dataobj).transpose(2, 1, 0)
            label = np.asarray(nib.load(label_path).dataobj).transpose(2, 1, 0)
        else:
            image, label = iio.imread(image_path), iio.imread(label_path)
        out.append((entry["case"], image, label))
    return out


def component_sizes(label: np.ndarray, cls: int) -> list[int]:
    components, n = ndimage.label(label == cls)
    return np.bincount(components.ravel())[1:].tolist() if n else []


def touching_classes(label: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different non-zero classes that share a face somewhere."""
    pairs = set()
    for axis in range(label.ndim):
        a = np.moveaxis(label, axis, 0)[:-1].ravel()
        b = np.moveaxis(label, axis, 0)[1:].ravel()
        sel = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[sel].tolist(), b[sel].tolist())}
    return pairs


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_layout_patients_and_pairing(datasets, kind):
    folder = datasets[kind]
    spec = KINDS[kind]
    images = sorted(p.name for p in (folder / "images").iterdir())
    labels = sorted(p.name for p in (folder / "labels").iterdir())
    assert len(images) == len(labels) == PATIENTS * IMAGES
    suffix = "_0000" + spec.image_ext if spec.ndim == 3 else spec.image_ext
    assert [n[: -len(suffix)] for n in images] == [n[: -len(spec.label_ext)] for n in labels]
    assert {n.split("_")[0] for n in images} == {"p000", "p001", "p002"}
    assert images[0] == ("p000_00_0000.nii.gz" if spec.ndim == 3 else f"p000_00{spec.image_ext}")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == kind and manifest["seed"] == 7 and manifest["size"] == list(SIZES[kind])
    assert manifest["classes"] == {str(k): v for k, v in spec.classes.items()}


def test_formats_2d(datasets):
    xray = datasets["xray"] / "images" / "p000_00.png"
    assert Image.open(xray).mode in ("I;16", "I;16B")
    assert iio.imread(xray).dtype == np.uint16 and iio.imread(xray).shape == SIZES["xray"]
    assert iio.imread(xray).max() > 255  # uses the 16-bit range
    derm = iio.imread(datasets["dermoscopy"] / "images" / "p000_00.jpg")
    assert derm.dtype == np.uint8 and derm.shape == (*SIZES["dermoscopy"], 3)
    assert Image.open(datasets["dermoscopy"] / "images" / "p000_00.jpg").format == "JPEG"
    us = iio.imread(datasets["ultrasound"] / "images" / "p000_00.png")
    assert us.dtype == np.uint8 and us.shape == SIZES["ultrasound"]
    for kind in ("xray", "dermoscopy", "ultrasound"):
        label = iio.imread(datasets[kind] / "labels" / "p000_00.png")
        assert label.dtype == np.uint8 and label.shape == SIZES[kind]


def test_formats_3d(datasets):
    ct = nib.load(datasets["ct"] / "images" / "p000_00_0000.nii.gz")
    assert ct.get_data_dtype() == np.int16
    assert ct.shape == tuple(reversed(SIZES["ct"]))
    assert ct.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    assert np.diag(ct.affine)[:3] == pytest.approx([0.8, 0.8, 2.5])
    hu = np.asarray(ct.dataobj)
    assert hu.min() >= -1024 and hu.max() <= 1500 and hu.min() < -900 and hu.max() > 500  # air and bone
    mr = nib.load(datasets["mri"] / "images" / "p000_00_0000.nii.gz")
    assert mr.get_data_dtype() == np.float32
    assert mr.header.get_zooms() == pytest.approx((0.6, 0.6, 3.0))
    for kind in ("ct", "mri"):
        label = nib.load(datasets[kind] / "labels" / "p000_00.nii.gz")
        assert label.get_data_dtype() == np.uint8 and label.shape == tuple(reversed(SIZES[kind]))
        assert np.allclose(label.affine, nib.load(datasets[kind] / "images" / "p000_00_0000.nii.gz").affine)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_label_content(datasets, kind):
    classes = set(KINDS[kind].classes)
    seen, multi, tiny, touching = set(), False, False, set()
    for case, image, label in read_pairs(kind, datasets[kind]):
        assert label.shape == image.shape[: label.ndim], case
        values = set(np.unique(label).tolist())
        assert values <= classes | {0}, case
        assert values - {0}, f"{case} has no object"
        seen |= values - {0}
        for cls in classes:
            sizes = component_sizes(label, cls)
            multi |= len(sizes) >= 2
            tiny |= any(20 <= s <= 60 for s in sizes)
        touching |= touching_classes(label)
    assert seen == classes
    assert multi, "no class with two or more instances"
    assert tiny, "no tiny object (20..60 px) that survives a 20 px size filter"
    assert touching, "no touching objects of different classes"


def test_some_objects_fall_below_size_filter(datasets):
    """Occasional sub-20 px objects exist, so the ingest size filter is exercised."""
    small = 0
    for kind in KINDS:
        for _, _, label in read_pairs(kind, datasets[kind]):
            small += sum(s < 20 for cls in KINDS[kind].classes for s in component_sizes(label, cls))
    assert small >= 1


def test_ct_tumours_lie_inside_liver_and_kidneys_are_two(datasets):
    for case, _, label in read_pairs("ct", datasets["ct"]):
        tumour = label == 4
        grown = ndimage.binary_dilation(tumour)
        assert set(np.unique(label[grown & ~tumour]).tolist()) == {1}, case  # only liver around it
        assert len(component_sizes(label, 2)) == 2, case
        assert len(component_sizes(label, 1)) == 1, case


def test_images_of_a_patient_are_alike(datasets):
    """Lung fields (lung plus the nodules in them) overlap more within a patient than across."""

    def lungs(case):
        return np.isin(iio.imread(datasets["xray"] / "labels" / f"{case}.png"), (1, 3))

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    same = dice(lungs("p000_00"), lungs("p000_01"))
    other = dice(lungs("p000_00"), lungs("p001_00"))
    assert same > 0.85 and same > other


def test_matches_demo_config_globs(repo_root, tmp_path):
    """Every demo dataset's synth output is found by its image/label globs and id regexes."""
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    for name, ds in config["datasets"].items():
        synth = ds["synth"]
        folder = tmp_path / name
        if synth["kind"] == "sa_med2d":  # a corpus in SA-Med2D's layout: tests/test_corpus_ingest.py
            continue
        generate_dataset(folder, synth["kind"], seed=0, patients=2, images_per_patient=1,
                         size=KINDS[synth["kind"]].min_size)
        assert ds["modality"] == synth["kind"] and ds["ndim"] == KINDS[synth["kind"]].ndim
        assert {int(k): v for k, v in ds["classes"].items()} == KINDS[synth["kind"]].classes
        images = [p.name for p in (folder / "images").iterdir()]
        labels = [p.name for p in (folder / "labels").iterdir()]
        assert len(images) == 2 and all(fnmatch.fnmatch(n, Path(ds["images"]).name) for n in images)
        assert len(labels) == 2 and all(fnmatch.fnmatch(n, Path(ds["labels"]).name) for n in labels)
        assert {re.match(ds["patient_id"], n)["patient"] for n in images} == {"p000", "p001"}
        if "case_id" in ds:
            cases_img = {re.match(ds["case_id"], n)["case"] for n in images}
            cases_lab = {re.match(ds["case_id"], n)["case"] for n in labels}
            assert cases_img == cases_lab == {"p000_00", "p001_00"}


def test_deterministic_and_seed_dependent(tmp_path):
    def files(folder):
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    for kind in KINDS:
        a, b, c = tmp_path / f"{kind}_a", tmp_path / f"{kind}_b", tmp_path / f"{kind}_c"
        generate_dataset(a, kind, seed=3, patients=1, images_per_patient=2, size=SIZES[kind])
        generate_dataset(b, kind, seed=3, patients=1, images_per_patient=2, size=SIZES[kind])
        generate_dataset(c, kind, seed=4, patients=1, images_per_patient=2, size=SIZES[kind])
        fa, fb, fc = files(a), files(b), files(c)
        assert fa == fb, kind
        image = next(k for k in fa if k.startswith("images/"))
        assert fa[image] != fc[image], kind
        assert not [k for k in fa if ".tmp" in k]  # no leftovers of atomic writes


def test_file_does_not_depend_on_patient_count(tmp_path):
    generate_dataset(tmp_path / "a", "xray", seed=1, patients=1, images_per_patient=1, size=(48, 48))
    generate_dataset(tmp_path / "b", "xray", seed=1, patients=3, images_per_patient=2, size=(48, 48))
    for sub in ("images", "labels"):
        assert ((tmp_path / "a" / sub / "p000_00.png").read_bytes()
                == (tmp_path / "b" / sub / "p000_00.png").read_bytes())


def test_nifti_gzip_header_has_no_timestamp():
    data = nifti_gz_bytes(np.zeros((2, 3, 4), np.int16), (2.5, 0.8, 0.8))
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\x00\x00\x00\x00"  # gzip MTIME field
    assert len(gzip.decompress(data)) == 352 + 2 * 3 * 4 * 2  # header + vox_offset pad + int16 data


def test_errors(tmp_path):
    with pytest.raises(SynthError, match="needs 3 values"):
        generate_dataset(tmp_path / "x", "ct", seed=0, patients=1, images_per_patient=1, size=(64, 64))
    with pytest.raises(SynthError, match="too small"):
        generate_dataset(tmp_path / "x", "xray", seed=0, patients=1, images_per_patient=1, size=(16, 16))
    generate_dataset(tmp_path / "s", "xray", seed=0, patients=2, images_per_patient=1, size=(48, 48))
    with pytest.raises(SynthError, match=r"p001_00\.png: not part of this generation"):
        generate_dataset(tmp_path / "s", "xray", seed=0, patients=1, images_per_patient=1, size=(48, 48))


def test_cli(tmp_path):
    out = tmp_path / "us"
    rc = main(["synth", "--kind", "ultrasound", "--out", str(out), "--seed", "2", "--patients", "2",
               "--images-per-patient", "1", "--size", "48", "64"])
    assert rc == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p000_00.png", "p001_00.png"]
    assert iio.imread(out / "images" / "p001_00.png").shape == (48, 64)
    assert main(["synth", "--kind", "mri", "--out", str(tmp_path / "m"), "--size", "64", "64"]) == 2


# --- helpers, against hand-computed cases --------------------------------------------------------


def test_is_separated_uses_chessboard_gap():
    mask = np.zeros((10, 12), bool)
    other = np.zeros_like(mask)
    mask[5, 5] = True
    other[5, 8] = True  # two free pixels in between
    assert is_separated(mask, other, gap=2)
    assert not is_separated(mask, other, gap=3)
    other[:] = False
    other[7, 7] = True  # diagonal, one free pixel in between
    assert is_separated(mask, other, gap=1) and not is_separated(mask, other, gap=2)


def test_keep_largest():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True  # 4 px
    mask[4, 4] = True  # 1 px
    kept = keep_largest(mask)
    assert kept.sum() == 4 and kept[0, 0] and not kept[4, 4]


def test_speckle_is_rayleigh_with_mean_one():
    s = speckle(np.random.default_rng(0), (256, 256))
    assert s.mean() == pytest.approx(1.0)
    # Rayleigh: std / mean = sqrt(4 / pi - 1) = 0.5227
    assert s.std() / s.mean() == pytest.approx(np.sqrt(4 / np.pi - 1), abs=0.02)


def test_bias_field_is_smooth_positive_mean_one():
    flat = bias_field(np.zeros(6), (4, 8, 8))
    assert np.allclose(flat, 1.0)
    field = bias_field(np.array([0.3, -0.2, 0.1, 0.1, 0.2, -0.1]), (10, 32, 32))
    assert field.min() > 0 and field.mean() == pytest.approx(1.0)
    assert field.max() / field.min() > 1.3  # not trivial
    # smooth: a neighbour step is a small fraction of the field's range (no noise-like jumps)
    assert np.abs(np.diff(field, axis=2)).max() < (field.max() - field.min()) / 8


def test_generators_depend_on_every_key():
    draws = {
        "base": image_rng(0, "ct", 0, 0).random(),
        "seed": image_rng(1, "ct", 0, 0).random(),
        "kind": image_rng(0, "mri", 0, 0).random(),
        "patient": image_rng(0, "ct", 1, 0).random(),
        "idx": image_rng(0, "ct", 0, 1).random(),
        "patient_rng": patient_rng(0, "ct", 0).random(),
    }
    assert len(set(draws.values())) == len(draws)
    assert image_rng(0, "ct", 0, 0).random() == draws["base"]
