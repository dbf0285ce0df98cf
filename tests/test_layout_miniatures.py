"""The layout miniatures themselves (tests/layouts/): reproducible bytes, real names, and an
Expected record that matches what was written.

The check of Expected re-reads every case from disk the way the authors' loaders do (torch-em /
medico-sam: sorted mask merge, colour tables, contour filling, value maps, channel picks), written
here independently of the generators, so a generator that writes one thing and promises another
fails. Ingest itself is tested elsewhere (tests/test_layouts_ingest.py).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from skimage.draw import polygon
from skimage.segmentation import relabel_sequential

from medpipe.io import read_image

from layouts import BY_ENTRY, GENERATORS, PROBLEM_KINDS, make_all
from layouts.expected import Case, Entry, Expected

NAMES = sorted(GENERATORS)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Expected]:
    return make_all(tmp_path_factory.mktemp("data"), seed=0)


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- bytes, names


def test_same_seed_same_bytes_other_seed_other_pixels_same_names(made, tmp_path):
    again = make_all(tmp_path / "again", seed=0)
    other = make_all(tmp_path / "other", seed=1)
    for name in NAMES:
        first, second, third = (digest(e[name].root) for e in (made, again, other))
        assert first == second, f"{name}: same seed, different bytes"
        assert sorted(first) == sorted(third), f"{name}: the seed changed file names"
        changed = [rel for rel in first if first[rel] != third[rel]]
        images = [case.files[0] for entry in made[name].entries.values() for case in entry.cases]
        assert any(rel == image or rel.startswith(image + "/") for rel in changed for image in images), name
        assert made[name].files == sorted(first)
        for entry_name, entry in made[name].entries.items():
            assert entry.case_ids == other[name].entries[entry_name].case_ids


# one or two paths per dataset exactly as the research notes / CONTRACT.md give the release
REAL_PATHS = {
    "sa_med2d": ["SAMed2Dv1/SAMed2D_v1.json", "SAMed2Dv1/SAMed2D_v1_class_mapping_id.json",
                 "SAMed2Dv1/images/ct_00--AbdomenCT1K--Case_00001--z_0010.png",
                 "SAMed2Dv1/masks/ct_00--AbdomenCT1K--Case_00001--z_0010--0003_000.png"],
    "camus": ["database_nifti/patient0001/patient0001_2CH_half_sequence.nii.gz",
              "database_nifti/patient0001/patient0001_4CH_ES_gt.nii.gz", "database_nifti/patient0001/Info_2CH.cfg"],
    "uwaterloo_skin": ["Skin Image Data Set-1/skin_data/melanoma/dermIS/SSM10_orig.jpg",
                       "Skin Image Data Set-2/skin_data/notmelanoma/dermis/nevus_1_contour.png"],
    "montgomery": ["MontgomerySet/CXR_png/MCUCXR_0001_0.png", "MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png",
                   "MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png",
                   "MontgomerySet/ClinicalReadings/MCUCXR_0001_0.txt"],
    "sega": ["KiTS/K1/K1.nrrd", "KiTS/K1/K1.seg.nrrd", "Rider/R1/R1.seg.nrrd", "Dongyang/D1/D1.nrrd"],
    "duke_liver": ["Segmentation/0001/3/images/IM-0003-0001.dicom", "Segmentation/0002/4/masks/IM-0004-0004.dicom"],
    "piccolo": ["piccolo dataset-release0.1/train/polyps/001_VP1_frame0001.png",
                "piccolo dataset-release0.1/validation/masks/014_VP3_frame0040.png"],
    "cbis_ddsm": ["DATA/Mass/Test/BENIGN/Mass-Test_P_00001_LEFT_CC_FULL_PRE.png",
                  "DATA/Mass/Test/MALIGNANT/Mass-Test_P_00001_LEFT_MLO_MASK_2_PRE.png"],
    "dca1": ["Database_134_Angiograms/1.pgm", "Database_134_Angiograms/10_gt.pgm"],
    "papila": ["PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f/FundusImages/RET002OD.jpg",
               "PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f/ExpertsSegmentations/Contours/"
               "RET002OD_cup_exp2.txt"],
    "jnu_ifm": ["Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/image_mha/00001.mha",
                "Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/label_mha/00003.mha"],
    "siim_acr": ["siim-acr-pneumothorax/png_images/0_test_1_.png", "siim-acr-pneumothorax/png_masks/1_test_0_.png",
                 "siim-acr-pneumothorax/stage_1_test_images.csv"],
    "m2caiseg": ["m2caiSeg dataset/test/images/0.jpg", "m2caiSeg dataset/test/groundtruth/0_gt.png",
                 "m2caiSeg dataset/train/images/00.jpg", "m2caiSeg dataset/trainval/groundtruth/00_gt.png"],
    "toothfairy": ["ToothFairy_Dataset/Dataset/P1/data.npy", "ToothFairy_Dataset/Dataset/P1/gt_alpha.npy",
                   "ToothFairy_Dataset/Dataset/P3/gt_sparse.npy", "ToothFairy_Dataset/splits.json"],
    "spider": ["images/1_t1.mha", "masks/2_t2_SPACE.mha"],
    "han_seg": ["HaN-Seg/set_1/case_01/case_01_IMG_CT.nrrd", "HaN-Seg/set_1/case_01/case_01_IMG_MR_T1.nrrd",
                "HaN-Seg/set_1/case_01/case_01_OAR_Brainstem.seg.nrrd"],
    "microusp": ["Micro_Ultrasound_Prostate_Segmentation_Dataset/train/micro_ultrasound_scans/microUS_train_01.nii.gz",
                 "Micro_Ultrasound_Prostate_Segmentation_Dataset/test/expert_annotations/"
                 "expert_annotation_test_01.nii.gz"],
    "lgg_mri": ["kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_10.tif",
                "kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_10_mask.tif", "kaggle_3m/data.csv"],
    "kits": ["kits23/dataset/case_00000/imaging.nii.gz", "kits23/dataset/case_00000/segmentation.nii.gz",
             "kits23/dataset/case_00000/instances/tumor_instance-2_annotation-1.nii.gz"],
    "segthy": ["US_volunteer_dataset/ground_truth_data/US/001_P1_1_left_US.nii",
               "US_volunteer_dataset/ground_truth_data/US_thyroid_label/001_P1_1_left.nii"],
    "osic_pulmofib": ["train/ID00001637202100000000001/1.dcm",
                      "nrrd_lung/nrrd_lung/ID00001637202100000000001_lung.nrrd",
                      "nrrd_trachea/nrrd_trachea/ID00002637202100000000002 _trachea.nrrd", "train.csv"],
    "oimhs": ["Images/1/1.png", "Images/2/2.png"],
    "isic": ["ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg",
             "ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png",
             "ISIC2018_Task1-2_Test_Input/LICENSE.txt"],
    "hil_toothseg": ["Teeth Segmentation PNG/d2/img/1.jpg", "Teeth Segmentation PNG/d2/masks_machine/1.png",
                     "Teeth Segmentation PNG/d2/ann/1.jpg.json",
                     "Teeth Segmentation PNG/obj_class_to_machine_color.json"],
    "oasis": ["OASIS_OAS1_0001_MR1/orig.nii.gz", "OASIS_OAS1_0001_MR1/seg4.nii.gz",
              "OASIS_OAS1_0001_MR1/aligned_seg4.nii.gz", "subjects.txt"],
    "leg_3d_us": ["train/s01/x_1.mha", "train/s01/masksX_1.mha", "test/s04/x_1.mha"],
}


def test_real_file_names_exist(made):
    assert sorted(REAL_PATHS) == NAMES
    for name, paths in REAL_PATHS.items():
        for rel in paths:
            assert (made[name].root / rel).is_file(), f"{name}: {rel} missing"


def test_entries_are_the_study_entries_of_the_contract(repo_root):
    """Every generator serves study entries; every study entry but the dropped ones has one."""
    study = set(yaml.safe_load((repo_root / "config/study.yaml").read_text())["datasets"])
    dropped = {"papila"}   # CONTRACT.md: split in two
    new = {"papila_disc", "papila_cup"}
    assert set(BY_ENTRY) - new <= study
    assert study - dropped <= set(BY_ENTRY)
    assert len(GENERATORS) == 26


def test_all_generators_together_are_fast(tmp_path):
    start = time.perf_counter()
    make_all(tmp_path, seed=3)
    assert time.perf_counter() - start < 10.0


# --------------------------------------------------------------------- Expected records themselves

CASE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


@pytest.mark.parametrize("name", NAMES)
def test_expected_records_are_consistent(made, name):
    expected = made[name]
    assert sorted(expected.entries) == sorted(GENERATORS[name].ENTRIES)
    for entry in expected.entries.values():
        ids = entry.case_ids
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert len(entry.cases) >= 2, f"{entry.name}: fewer than 2 good cases"
        assert not set(ids) & {p.case_id for p in entry.quarantined}
        for case in entry.cases:
            assert CASE_ID.match(case.case_id) and CASE_ID.match(case.patient_id)
            spatial = case.image_shape[:entry.ndim]
            assert case.label.shape == spatial and case.label.ndim == entry.ndim
            assert np.issubdtype(case.label.dtype, np.integer)
            assert case.values, f"{entry.name}/{case.case_id}: empty label"
            if entry.label_kind == "classes":
                assert set(case.values) <= set(entry.classes), f"{entry.name}/{case.case_id}: {case.values}"
            else:
                assert case.values == list(range(1, case.n_objects + 1))
            if case.image is not None:
                assert case.image.shape == case.image_shape
            if case.spacing is not None:
                assert len(case.spacing) == entry.ndim
            for rel in case.files:
                assert (expected.root / rel).exists(), rel
        for problem in entry.quarantined:
            assert problem.kind in PROBLEM_KINDS
            assert (expected.root / problem.path).exists(), problem


# ------------------------------------------- re-reading every case as the authors' loaders do


def load(path: Path):
    """(array, spacing or None): .pgm / .npy directly, the rest through medpipe's readers."""
    if path.suffix == ".pgm":
        return np.asarray(iio.imread(path)), None
    if path.suffix == ".npy":
        return np.load(path), None
    array, meta = read_image(path)
    return np.asarray(array), meta.spacing


def single(binarise: bool = False):
    def read(root: Path, entry: Entry, case: Case):
        image, spacing = load(root / case.files[0])
        label, _ = load(root / case.files[1])
        return image, ((label > 0) if binarise else label), spacing
    return read


def read_sa_med2d(root, entry, case):
    """torch-em `_process_each_image`, from the JSON index and the mask files on disk."""
    index = json.loads((root / "SAMed2Dv1/SAMed2D_v1.json").read_text())
    image = iio.imread(root / case.files[0])
    masks = sorted(index[f"images/{case.case_id}.png"])
    dataset = case.case_id.split("--")[1]
    instances = np.zeros(image.shape[:2], np.uint16)
    for idx, rel in enumerate(masks, start=1):
        if dataset == "ACDC" and "0003_000" in rel and len(masks) > 1:
            continue
        mask = iio.imread(root / "SAMed2Dv1" / rel)
        if mask.shape != instances.shape:
            continue
        if dataset == "ichallenge_adam_task2":
            mask = mask == 0
        instances[mask > 0] = idx
    kept = [masks[int(v) - 1] for v in np.unique(instances) if v]
    assert case.attrs["instance_masks"] == kept
    assert case.patient_id == "--".join(case.case_id.split("--")[1:3])
    return image, relabel_sequential(instances)[0], None


def read_montgomery(root, entry, case):
    image, _ = load(root / case.files[0])
    left, right = (load(root / rel)[0] for rel in case.files[1:])
    return image, (left > 0) | (right > 0), None


def read_union(root, entry, case):
    image, spacing = load(root / case.files[0])
    return image, np.any([load(root / rel)[0] > 0 for rel in case.files[1:]], axis=0), spacing


def read_papila(root, entry, case):
    image, _ = load(root / case.files[0])
    xy = np.loadtxt(root / case.files[1])
    label = np.zeros(image.shape[:2], np.uint8)
    rr, cc = polygon(xy[:, 1], xy[:, 0], shape=label.shape)
    label[rr, cc] = 1
    return image, label, None


def read_jnu(root, entry, case):
    image, _ = load(root / case.files[0])
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)                    # medico-sam: rgb image with channels first
    return image, load(root / case.files[1])[0], None


M2CAI_COLOURS = {  # torch-em m2caiseg LABEL_MAPS
    (0, 0, 0): 0, (0, 85, 170): 1, (0, 85, 255): 2, (0, 170, 255): 3, (0, 255, 85): 4, (0, 255, 170): 5,
    (85, 0, 170): 6, (85, 0, 255): 7, (170, 85, 85): 8, (170, 170, 170): 9, (85, 170, 0): 10, (85, 170, 255): 11,
    (85, 255, 0): 12, (85, 255, 170): 13, (170, 0, 255): 14, (255, 0, 255): 15, (255, 255, 0): 16, (255, 0, 0): 17,
    (170, 0, 85): 18,
}


def decode_colours(rgb: np.ndarray, table: dict) -> np.ndarray:
    label = np.zeros(rgb.shape[:2], np.uint8)
    for colour, value in table.items():
        label[np.all(rgb[..., :3] == colour, axis=-1)] = value
    return label


def read_m2caiseg(root, entry, case):
    image, _ = load(root / case.files[0])
    return image, decode_colours(iio.imread(root / case.files[1]), M2CAI_COLOURS), None


def read_spider(root, entry, case):
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(root / case.files[0]))).transpose(2, 0, 1)
    mask = sitk.ReadImage(str(root / case.files[1]))
    raw = sitk.GetArrayFromImage(mask).transpose(2, 0, 1)
    label = np.zeros(raw.shape, np.uint8)
    label[((raw >= 1) & (raw <= 25)) | ((raw >= 101) & (raw <= 125))] = 1
    label[raw == 100] = 2
    label[(raw >= 201) & (raw <= 225)] = 3
    assert set(np.unique(raw)) <= {0, 100} | set(range(1, 26)) | set(range(101, 126)) | set(range(201, 226))
    sx, sy, sz = mask.GetSpacing()
    return image, label, (sx, sz, sy)


def read_han_seg(root, entry, case):
    image, spacing = load(root / case.files[0])
    ids = {name: value for value, name in entry.classes.items()}
    label = np.zeros(image.shape, np.uint8)
    for rel in sorted(case.files[1:]):
        organ = re.search(r"_OAR_(?P<name>.+)\.seg\.nrrd$", rel).group("name")
        label[load(root / rel)[0] > 0] = ids[organ]
    return image, label, spacing


def read_lgg(root, entry, case):
    def index(rel):
        return int(re.search(r"_(\d+)(_mask)?\.tif$", rel).group(1))
    images = sorted((rel for rel in case.files if not rel.endswith("_mask.tif")), key=index)
    masks = sorted((rel for rel in case.files if rel.endswith("_mask.tif")), key=index)
    assert [index(r) for r in images] == [index(r) for r in masks] == list(range(1, len(images) + 1))
    image = np.stack([load(root / rel)[0][..., 1] for rel in images])     # FLAIR
    label = np.stack([load(root / rel)[0] for rel in masks]) > 0
    assert case.patient_id == re.match(r"TCGA_[A-Z0-9]+_[A-Z0-9]+", case.case_id).group(0)
    return image, label, None


def read_kits(root, entry, case):
    image, spacing = load(root / case.files[0])
    tumour = np.any([load(root / rel)[0] > 0 for rel in case.files[1:]], axis=0)
    seg = load(root / case.files[0].replace("imaging", "segmentation"))[0]
    assert np.array_equal(tumour, seg == 2)
    return image.transpose(2, 1, 0), tumour.transpose(2, 1, 0), tuple(reversed(spacing))


def read_osic(root, entry, case):
    image, spacing = load(root / case.files[0])                 # DICOM series, sorted by position, HU
    ids = {"heart": 1, "lung": 2, "trachea": 3}
    label = np.zeros(image.shape, np.uint8)
    positions = sorted(float(sitk.ReadImage(str(p)).GetOrigin()[2]) for p in (root / case.files[0]).iterdir())
    for rel in case.files[1:]:
        organ = re.search(r"_(heart|lung|trachea)\.nrrd$", rel).group(1)
        mask = sitk.ReadImage(str(root / rel))
        assert mask.GetOrigin()[2] == pytest.approx(positions[0])    # NRRD index 0 = lowest slice
        label[sitk.GetArrayFromImage(mask) > 0] = ids[organ]
    return image, label, spacing


def read_oimhs(root, entry, case):
    scan = iio.imread(root / case.files[0])
    colours = {(255, 255, 0): 1, (0, 255, 0): 2, (0, 0, 255): 3, (255, 0, 0): 4}
    return scan[:, :512], decode_colours(scan[:, 512:1024], colours), None


def read_hil(root, entry, case):
    image, _ = load(root / case.files[0])
    machine = iio.imread(root / case.files[1])
    table = json.loads((root / "Teeth Segmentation PNG/obj_class_to_machine_color.json").read_text())
    assert np.array_equal(decode_colours(machine, {tuple(c): int(k) for k, c in table.items()}),
                          case.attrs["tooth_ids"])
    return image, np.any(machine > 0, axis=-1), None


def read_leg(root, entry, case):
    image, spacing = load(root / case.files[0])
    raw, _ = load(root / case.files[1])
    assert sitk.ReadImage(str(root / case.files[1])).GetOrigin() == pytest.approx(case.attrs["origin_xyz"])
    return image, np.select([raw == 100, raw == 150, raw == 200], [1, 2, 3], 0), spacing


READERS = {
    "sa_med2d": read_sa_med2d, "camus": single(), "uwaterloo_skin": single(binarise=True),
    "montgomery": read_montgomery, "sega": single(), "duke_liver": single(), "piccolo": single(binarise=True),
    "cbis_ddsm": read_union, "dca1": single(binarise=True), "papila": read_papila, "jnu_ifm": read_jnu,
    "siim_acr": single(binarise=True), "m2caiseg": read_m2caiseg, "toothfairy": single(), "spider": read_spider,
    "han_seg": read_han_seg, "microusp": single(binarise=True), "lgg_mri": read_lgg, "kits": read_kits,
    "segthy": single(), "osic_pulmofib": read_osic, "oimhs": read_oimhs, "isic": single(binarise=True),
    "hil_toothseg": read_hil, "oasis": single(), "leg_3d_us": read_leg,
}


@pytest.mark.parametrize("name", NAMES)
def test_expected_matches_the_files(made, name):
    expected = made[name]
    for entry in expected.entries.values():
        for case in entry.cases:
            image, label, spacing = READERS[name](expected.root, entry, case)
            where = f"{entry.name}/{case.case_id}"
            np.testing.assert_array_equal(np.asarray(label).astype(np.int64), case.label, err_msg=where)
            assert image.shape == case.image_shape, where
            if case.image is not None:
                np.testing.assert_array_equal(image, case.image, err_msg=where)
            if case.spacing is not None:
                assert spacing == pytest.approx(case.spacing, rel=1e-5), where


def test_natural_quarantines_are_what_they_claim(made):
    """The bad inputs every copy of the release has (not defects): checked from the files."""
    root = made["sa_med2d"].root / "SAMed2Dv1"
    xray = made["sa_med2d"].entries["sa_med2d"]
    constant = next(p for p in xray.quarantined if p.kind == "constant_image")
    image = iio.imread(made["sa_med2d"].root / constant.path)
    assert image.min() == image.max()
    index = json.loads((root / "SAMed2D_v1.json").read_text())
    assert index["images/ct_00--AbdomenCT1K--Case_00002--z_0003.png"] == []
    [mismatch] = index["images/x_ray--crass--CHNCXR_0002_0--x_0000.png"]
    image = iio.imread(root / "images/x_ray--crass--CHNCXR_0002_0--x_0000.png")
    assert iio.imread(root / mismatch).shape != image.shape
    hil = made["hil_toothseg"]
    [empty] = hil.entry().quarantined
    assert empty.kind == "empty_label" and not iio.imread(hil.root / empty.path).any()
    for name, case_id in (("toothfairy", "P3"), ("osic_pulmofib", "ID00003637202100000000003")):
        [unpaired] = made[name].entry().quarantined
        assert unpaired.case_id == case_id and unpaired.kind == "unpaired_image"
        assert not list(made[name].root.rglob(f"{case_id}*_*.nrrd")) and not list(
            made[name].root.rglob(f"{case_id}/gt_alpha.npy"))


# ------------------------------------------------------------------------------------------ defects

DEFECT_CASES = [(name, defect) for name in NAMES for defect in GENERATORS[name].DEFECTS]


def test_every_generator_has_defects_and_refuses_unknown_ones(tmp_path):
    for name, module in GENERATORS.items():
        assert len(module.DEFECTS) >= 2, name
    with pytest.raises(ValueError, match="unknown defects"):
        GENERATORS["kits"].make(tmp_path / "a", defects=("no_such_defect",))
    GENERATORS["dca1"].make(tmp_path / "b")
    with pytest.raises(FileExistsError, match="empty folder"):
        GENERATORS["dca1"].make(tmp_path / "b")


def files_of(root: Path, case: Case) -> dict[str, str]:
    out = {}
    for rel in case.files:
        path = root / rel
        for p in ([path] if path.is_file() else sorted(path.rglob("*"))):
            if p.is_file():
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("name, defect", DEFECT_CASES)
def test_defect_breaks_exactly_its_case(made, tmp_path, name, defect):
    clean = made[name]
    broken = GENERATORS[name].make(tmp_path, seed=0, defects=(defect,))
    assert broken.defects == (defect,)
    assert digest(broken.root) != digest(clean.root)
    new_problems = []
    for entry_name, entry in broken.entries.items():
        before = clean.entries[entry_name]
        added = [p for p in entry.quarantined if p not in before.quarantined]
        new_problems += added
        assert set(before.quarantined) <= set(entry.quarantined)
        assert set(entry.case_ids) == set(before.case_ids) - {p.case_id for p in added}
        for case in entry.cases:                                   # every other case is untouched
            assert files_of(broken.root, case) == files_of(clean.root, before.case(case.case_id)), case.case_id
    assert new_problems, f"{name}/{defect}: no case quarantined"
    for problem in new_problems:
        path, before = broken.root / problem.path, clean.root / problem.path
        if problem.kind in ("missing_file", "unpaired_label") and not path.exists():
            assert before.exists(), problem                        # the defect removed the file it names
            continue
        assert path.exists(), problem
        if problem.kind in ("shape_mismatch", "unreadable", "unknown_value", "bad_channels", "empty_label"):
            assert path.is_dir() or not before.exists() or path.read_bytes() != before.read_bytes(), problem


# --------------------------------------------------- the contract's globs see the miniature's cases

# images / labels globs of CONTRACT.md relative to /path/to/data/<folder> (sa_med2d reads its index)
CONTRACT_GLOBS = {
    "camus": ("database_nifti/patient*/patient*_[24]CH_half_sequence.nii.gz",
              "database_nifti/patient*/patient*_[24]CH_half_sequence_gt.nii.gz"),
    "uwaterloo_skin": ("Skin Image Data Set-*/skin_data/*/*/*_orig.jpg",
                       "Skin Image Data Set-*/skin_data/*/*/*_contour.png"),
    "montgomery": ("MontgomerySet/CXR_png/*.png", "MontgomerySet/ManualMask/*Mask/*.png"),
    "sega": ("*/*/[KRD]*[0-9].nrrd", "*/*/*.seg.nrrd"),
    "duke_liver": ("Segmentation/*/*/images", "Segmentation/*/*/masks"),
    "piccolo": ("piccolo dataset-release0.1/*/polyps/*", "piccolo dataset-release0.1/*/masks/*"),
    "cbis_ddsm": ("DATA/Mass/*/*/*_FULL_*.png", "DATA/Mass/*/*/*_MASK_*.png"),
    "dca1": ("Database_134_Angiograms/*[0-9].pgm", "Database_134_Angiograms/*_gt.pgm"),
    "papila_disc": ("PapilaDB-PAPILA-*/FundusImages/*.jpg",
                    "PapilaDB-PAPILA-*/ExpertsSegmentations/Contours/*_disc_exp1.txt"),
    "papila_cup": ("PapilaDB-PAPILA-*/FundusImages/*.jpg",
                   "PapilaDB-PAPILA-*/ExpertsSegmentations/Contours/*_cup_exp1.txt"),
    "jnu-ifm": ("Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/image_mha/*.mha",
                "Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/label_mha/*.mha"),
    "siim_acr": ("siim-acr-pneumothorax/png_images/*_test_1_.png", "siim-acr-pneumothorax/png_masks/*_test_1_.png"),
    "m2caiseg": ("m2caiSeg dataset/test/images/*.jpg", "m2caiSeg dataset/test/groundtruth/*_gt.png"),
    "toothfairy": ("ToothFairy_Dataset/Dataset/*/data.npy", "ToothFairy_Dataset/Dataset/*/gt_alpha.npy"),
    "spider": ("images/*.mha", "masks/*.mha"),
    "han-seg": ("HaN-Seg/set_1/*/*_IMG_CT.nrrd", "HaN-Seg/set_1/*/*_OAR_*.seg.nrrd"),
    "microusp": ("Micro_Ultrasound_Prostate_Segmentation_Dataset/*/micro_ultrasound_scans/*.nii.gz",
                 "Micro_Ultrasound_Prostate_Segmentation_Dataset/*/expert_annotations/*.nii.gz"),
    "lgg_mri": ("kaggle_3m/*/*[0-9].tif", "kaggle_3m/*/*_mask.tif"),
    "kits": ("kits23/dataset/case_*/imaging.nii.gz",
             "kits23/dataset/case_*/instances/tumor_instance-*_annotation-1.nii.gz"),
    "segthy": ("US_volunteer_dataset/ground_truth_data/US/*_US.nii",
               "US_volunteer_dataset/ground_truth_data/US_thyroid_label/*.nii"),
    "osic_pulmofib": ("train/*", "nrrd_[hlt]*/nrrd_*/*.nrrd"),
    "oimhs": ("Images/*/*.png", "Images/*/*.png"),
    "isic": ("ISIC2018_Task1-2_*_Input/*.jpg", "ISIC2018_Task1_*_GroundTruth/*_segmentation.png"),
    "hil_toothseg": ("Teeth Segmentation PNG/d2/img/*.jpg", "Teeth Segmentation PNG/d2/masks_machine/*.png"),
    "oasis": ("OASIS_OAS1_*_MR1/orig.nii.gz", "OASIS_OAS1_*_MR1/seg4.nii.gz"),
    "leg_3d_us": ("*/*/x*.mha", "*/*/masksX*.mha"),
}


def test_contract_globs_match_exactly_the_expected_files(made):
    assert set(CONTRACT_GLOBS) == set(BY_ENTRY) - {"sa_med2d"}
    for entry_name, (images, labels) in CONTRACT_GLOBS.items():
        expected = made[BY_ENTRY[entry_name].NAME]
        entry = expected.entries[entry_name]
        root = expected.root

        def matched(pattern, root=root):
            return {Path(p).relative_to(root).as_posix() for p in glob.glob(glob.escape(str(root)) + "/" + pattern)}

        cases = entry.cases
        image_files = {c.files[0] for c in cases}
        if entry_name == "lgg_mri":
            image_files = {f for c in cases for f in c.files if not f.endswith("_mask.tif")}
        assert image_files <= matched(images), entry_name
        for extra in matched(images) - image_files:        # only the images of quarantined cases
            assert any(p.case_id in extra for p in entry.quarantined), f"{entry_name}: {extra}"
        label_files = {f for c in cases for f in (c.files[1:] or c.files)}
        if entry_name == "lgg_mri":
            label_files = {f for c in cases for f in c.files if f.endswith("_mask.tif")}
        assert label_files <= matched(labels), entry_name
