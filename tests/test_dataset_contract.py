"""The dataset contract's reading rules, each on a small hand-made layout with hand-computed labels.

(The 35 study datasets go through ingest on generated miniatures in test_study_layouts.py; this
file pins each rule on its own: ids from paths, include, case-id validation, symlink loops,
stacks, label merges, contours, colour and value maps, channels, crops, axes, the SA-Med2D
adapter and the store's case index.)
"""

import json
import os
import re

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medpipe.data.ingest as ingest
from medpipe.config import ConfigError, validate_config
from medpipe.io.cases import case_id_problem, find
from medpipe.io.layouts.sa_med2d import iter_index
from medpipe.io.quarantine import read_quarantine
from medpipe.store import DatasetStore, StoreWriter

CHUNKS = {"chunks_2d": [16, 16], "chunks_3d": [4, 16, 16]}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(spec, name="ds"):
    """Ingest; a dataset whose every case is refused gives an empty store (``allow_empty``: these
    tests check the refusal reasons, the empty-dataset guard is tested in test_missing_cases.py)."""
    spec = {"modality": "ct", "ndim": 2, "classes": {1: "a"}, **spec}
    report = ingest.ingest_dataset(name, spec, f"out/{name}.zarr", f"out/{name}.tsv", CHUNKS, allow_empty=True)
    return report, DatasetStore(f"out/{name}.zarr"), read_quarantine(f"out/{name}.tsv")


def png(path, array):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    iio.imwrite(path, np.asarray(array))


def nifti(path, zyx, spacing=(2.0, 1.0, 0.5)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(zyx).transpose(2, 1, 0), np.diag([spacing[2], spacing[1], spacing[0], 1])),
             path)


def image(seed, shape=(8, 10)):
    return np.random.default_rng(seed).integers(1, 200, shape).astype(np.uint8)


def box(shape, rows, cols, value=1):
    out = np.zeros(shape, np.uint8)
    out[rows, cols] = value
    return out


def problems(rows):
    return {row.case_id: row.problem for row in rows}


# ------------------------------------------------------------------------- ids and discovery


def test_relpath_ids_with_case_format_pair_files_that_share_a_name():
    """KiTS-like: every case has the same file names; the id is the folder (kits, oasis, duke)."""
    for case, seed in (("case_00000", 0), ("case_00007", 1)):
        png(f"data/{case}/imaging.png", image(seed))
        png(f"data/{case}/segmentation.png", box((8, 10), slice(1, 3), slice(2, 5)))
    png("data/case_00009/imaging.png", image(9))  # no segmentation: quarantined, named
    spec = {"images": "data/*/imaging.png", "labels": "data/*/segmentation.png", "ids_from": "relpath",
            "case_id": r"^(?P<num>case)_(?P<n>\d+)/", "case_format": "{num}-{n}",
            "patient_id": r"^case_(?P<patient>\d{4})"}
    report, store, rows = run(spec)
    assert store.case_ids == ["case-00000", "case-00007"]
    assert store.info("case-00007").patient_id == "0000"
    assert store.info("case-00007").attrs["source"] == {"image": "data/case_00007/imaging.png",
                                                       "label": "data/case_00007/segmentation.png"}
    assert list(problems(rows)) == ["case-00009"] and "image without label" in rows[0].problem


def test_include_leaves_files_out_silently():
    for i in range(3):
        png(f"img/p{i}.png", image(i))
        png(f"lab/p{i}.png", box((8, 10), slice(0, 2), slice(0, 2)))
    _, store, rows = run({"images": "img/*.png", "labels": "lab/*.png", "include": "^p[02]"})
    assert store.case_ids == ["p0", "p2"] and rows == []


@pytest.mark.parametrize("case_id, reason", [
    ("..", "empty or a relative folder name"), (".", "empty or a relative folder name"),
    ("a/b", "path separator"), ("a\\b", "path separator"), ("a\x01b", "control character"),
    ("a\nb", "control character"), ("a\tb", "control character"), ("__meta", "reserved by zarr"),
    ("zarr.json", "reserved by zarr"), ("x" * 256, "longer than 255 bytes"),
])
def test_invalid_case_ids_are_refused(case_id, reason):
    assert reason in case_id_problem(case_id)
    assert case_id_problem("Mass-Test_P_00194_RIGHT_CC") is None and case_id_problem("a b (1).é") is None


def test_invalid_case_ids_are_quarantined_and_ingest_goes_on():
    """Issue 13: ids a path or a format string produce that cannot name a zarr group."""
    for name in ("good", "__bad", "zarr.json", "ctl\x01x", "dots..x"):
        png(f"img/{name}.png", image(1))
        png(f"lab/{name}.png", box((8, 10), slice(0, 2), slice(0, 2)))
    spec = {"images": "img/*.png", "labels": "lab/*.png", "case_id": r"^(?P<case>[^.]+(\.json)?|dots)"}
    _, store, rows = run(spec)
    refused = problems(rows)
    assert store.case_ids == ["dots", "good"]
    assert set(refused) == {"__bad", "zarr.json", "ctl\x01x"}
    assert all("invalid case id" in problem for problem in refused.values())
    # a patient id with a control character (it would break the TSV tables)
    png("img/p\tq_1.png", image(1))
    png("lab/p\tq_1.png", box((8, 10), slice(0, 2), slice(0, 2)))
    _, store, rows = run({"images": "img/p*_1.png", "labels": "lab/p*_1.png", "case_id": r"_(?P<case>1)\.png",
                          "patient_id": r"^(?P<patient>[^_]+)_"}, name="patient")
    assert store.case_ids == [] and "invalid patient id" in rows[0].problem
    # a case_format that builds a path separator
    _, store, rows = run({"images": "img/good.png", "labels": "lab/good.png", "ids_from": "relpath",
                          "case_id": r"(?P<a>goo)(?P<b>d)", "case_format": "{a}/{b}"}, name="sep")
    assert store.case_ids == [] and "path separator" in rows[0].problem


def test_recursive_glob_through_a_symlink_loop_finds_each_file_once(in_tmp):
    """Issue 13: `**` must not walk `loopdir -> ..` again and again (glob.glob returns 40 copies)."""
    png("data/a/x1.png", image(1))
    png("data/a/sub/x2.png", image(2))
    os.symlink("..", "data/a/sub/loopdir")
    os.symlink("a", "data/alias")  # a second path to the same files
    found = find("data/**/*.png")
    assert [p.as_posix() for p in found] == ["data/a/sub/x2.png", "data/a/x1.png"]
    for path in found:
        png(f"lab/{path.name}", box((8, 10), slice(0, 2), slice(0, 2)))
    _, store, rows = run({"images": "data/**/*.png", "labels": "lab/*.png"})
    assert store.case_ids == ["x1", "x2"] and rows == []  # no duplicate case id from the loop


def test_find_matches_glob_semantics_on_plain_trees(in_tmp):
    import glob

    for path in ("t/a/1.png", "t/a/.hidden.png", "t/b/c/2.png", "t/b/3.jpg", "t/.h/4.png"):
        png(path, image(0))
    for pattern in ("t/*/*.png", "t/**/*.png", "t/**", "t/b/*", "t/[ab]/*.png", "t/a/1.png", "t/nothing/*"):
        expected = sorted(p.rstrip("/") for p in glob.glob(pattern, recursive=True))
        assert [p.as_posix() for p in find(pattern)] == [p for p in expected if p != "t"], pattern


# ------------------------------------------------------------------------------------- stacks


def test_slice_stack_in_numeric_order_with_one_channel_and_a_value_map():
    """LGG-like: RGB slices `<case>_<k>.tif` + `<case>_<k>_mask.tif` (0/255), k = 1..11."""
    import tifffile

    case = "TCGA_CS_4941_19960909"
    os.makedirs(f"kaggle_3m/{case}")
    for k in range(1, 12):
        rgb = np.zeros((6, 7, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, k, 30  # channel 1 holds the slice number
        tifffile.imwrite(f"kaggle_3m/{case}/{case}_{k}.tif", rgb, photometric="rgb")
        tifffile.imwrite(f"kaggle_3m/{case}/{case}_{k}_mask.tif", box((6, 7), slice(0, 2), slice(0, 2), 255 * (k == 4)))
    spec = {"ndim": 3, "images": "kaggle_3m/*/*[0-9].tif", "labels": "kaggle_3m/*/*_mask.tif", "stack": True,
            "case_id": r"^(?P<case>TCGA_.+)_(?P<slice>\d+)(_mask)?\.tif$",
            "patient_id": r"^(?P<patient>TCGA_[A-Z0-9]+_[A-Z0-9]+)_", "channel": 1, "label_map": {"255": 1}}
    _, store, rows = run(spec)
    assert rows == [] and store.case_ids == [case] and store.info(case).patient_id == "TCGA_CS_4941"
    volume = store.image(case)
    assert volume.shape == (11, 6, 7) and list(volume[:, 0, 0]) == list(range(1, 12))  # 10 after 9
    label = store.label(case)
    assert set(np.unique(label[3])) == {0, 1} and label.sum() == 4
    assert len(store.info(case).attrs["source"]["image"]) == 11
    os.remove(f"kaggle_3m/{case}/{case}_7_mask.tif")
    _, store, rows = run(spec)
    assert store.case_ids == [] and "slices without label [7]" in rows[0].problem


# ------------------------------------------------------------------------------ label merges


def test_union_of_label_files_with_files_per_case():
    """Montgomery-like: left and right lung masks in two folders, same file names; one is missing."""
    for name in ("MCU_1", "MCU_2"):
        png(f"CXR_png/{name}.png", image(3))
        png(f"ManualMask/leftMask/{name}.png", box((8, 10), slice(1, 6), slice(0, 4), 255))
    png("ManualMask/rightMask/MCU_1.png", box((8, 10), slice(1, 6), slice(6, 10), 1).astype(bool))
    spec = {"images": "CXR_png/*.png",
            "labels": {"glob": "ManualMask/*Mask/*.png", "merge": "union", "files_per_case": 2}}
    _, store, rows = run(spec)
    assert store.case_ids == ["MCU_1"]
    np.testing.assert_array_equal(store.label("MCU_1"), box((8, 10), slice(1, 6), slice(0, 4))
                                  | box((8, 10), slice(1, 6), slice(6, 10)))
    assert "expected 2 label files for case 'MCU_2', found 1" in problems(rows)["MCU_2"]
    assert store.info("MCU_1").attrs["source"]["label"] == ["ManualMask/leftMask/MCU_1.png",
                                                            "ManualMask/rightMask/MCU_1.png"]


def test_class_per_file_paints_by_name_in_sorted_order_and_refuses_unknown_names():
    """HaN-Seg-like: one binary file per organ, the organ's name is the class; later files win."""
    shape = (3, 8, 10)
    volume = image(4, shape).astype(np.int16)
    for case in ("case_01", "case_02"):
        sitk.WriteImage(sitk.GetImageFromArray(volume), f"{case}_IMG_CT.nrrd")
    masks = {"Brainstem": box(shape, slice(0, 2), slice(0, 4)), "SpinalCord": box(shape, slice(1, 3), slice(2, 6))}
    for organ, mask in masks.items():
        sitk.WriteImage(sitk.GetImageFromArray(mask), f"case_01_OAR_{organ}.seg.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(masks["Brainstem"]), "case_02_OAR_Liver.seg.nrrd")
    spec = {"ndim": 3, "images": "*_IMG_CT.nrrd",
            "labels": {"glob": "*_OAR_*.seg.nrrd", "merge": "class_per_file",
                       "class_name": r"_OAR_(?P<name>.+)\.seg\.nrrd$"},
            "case_id": r"^(?P<case>case_\d+)_", "classes": {5: "Brainstem", 30: "SpinalCord"}}
    _, store, rows = run(spec)
    expected = np.zeros(shape, np.uint8)
    expected[masks["Brainstem"] > 0] = 5
    expected[masks["SpinalCord"] > 0] = 30  # SpinalCord sorts after Brainstem: it wins the overlap
    np.testing.assert_array_equal(store.label("case_01"), expected)
    assert "class name 'Liver' is not one of the dataset's classes" in problems(rows)["case_02"]


def test_instance_per_file_overwrites_in_sorted_order_and_relabels():
    shape = (6, 6)
    png("img/a.png", image(5, shape))
    png("m/a--0002.png", box(shape, slice(0, 3), slice(0, 3), 255))   # id 2: later, overwrites id 1
    png("m/a--0001.png", box(shape, slice(1, 4), slice(1, 4), 255))   # id 1
    png("m/a--0003.png", box(shape, slice(0, 3), slice(0, 3), 255))   # id 3: covers id 2 entirely
    png("m/a--0004.png", box(shape, slice(5, 6), slice(5, 6), 255))   # id 4
    spec = {"images": "img/*.png", "labels": {"glob": "m/*.png", "merge": "instance_per_file"},
            "case_id": r"^(?P<case>[a-z]+)", "label_kind": "instances", "classes": {1: "object"},
            "roles": ["finetune"]}
    _, store, rows = run(spec)
    expected = np.zeros(shape, np.uint16)
    expected[1:4, 1:4] = 1
    expected[0:3, 0:3] = 2  # old id 3 -> 2 (old id 2 disappeared under it)
    expected[5, 5] = 3      # old id 4 -> 3
    assert rows == [] and store.label_kind == "instances"
    np.testing.assert_array_equal(store.label("a"), expected)
    assert store.label_array("a").dtype == np.uint16
    assert store.info("a").attrs["instance_masks"] == ["m/a--0001.png", "m/a--0003.png", "m/a--0004.png"]


def test_contour_text_files_are_filled_on_the_image_grid():
    png("FundusImages/RET002OD.jpg", np.full((10, 12, 3), 90, np.uint8))
    os.makedirs("Contours")
    # x y rows (column, row); one vertex lies outside the image: clipped
    np.savetxt("Contours/RET002OD_disc_exp1.txt", [[2, 1], [6, 1], [6, 4], [2, 4]], fmt="%.6e")
    np.savetxt("Contours/RET003OD_disc_exp1.txt", [[0, 0], [30, 0], [30, 30]], fmt="%.6e")
    png("FundusImages/RET003OD.jpg", np.full((10, 12, 3), 90, np.uint8))
    spec = {"images": "FundusImages/*.jpg", "labels": {"glob": "Contours/*_disc_exp1.txt", "format": "contour_xy"},
            "case_id": r"^(?P<case>RET\d+O[DS])", "patient_id": r"^(?P<patient>RET\d+)O[DS]"}
    _, store, rows = run(spec)
    from skimage.draw import polygon

    expected = np.zeros((10, 12), np.uint8)
    expected[polygon([1, 1, 4, 4], [2, 6, 6, 2], shape=(10, 12))] = 1
    np.testing.assert_array_equal(store.label("RET002OD"), expected)
    assert store.info("RET002OD").patient_id == "RET002" and rows == []
    assert store.label("RET003OD").sum() > 0  # the clipped polygon


# ------------------------------------------------------------------------- colours and values


def test_label_colours_with_and_without_other():
    label = np.zeros((4, 5, 3), np.uint8)
    label[0, 0] = (255, 255, 0)
    label[1, 1] = (0, 0, 255)
    label[2, 2] = (128, 128, 0)  # an anti-aliased stray colour
    png("img/a.png", image(6, (4, 5)))
    png("lab/a.png", label)
    spec = {"images": "img/*.png", "labels": "lab/*.png", "classes": {1: "choroid", 3: "cyst"},
            "label_colors": {"255,255,0": 1, "0,0,255": 3, "0,0,0": 0}}
    _, store, rows = run(spec)
    assert "label colours not in label_colors: (128,128,0)" in problems(rows)["a"]
    _, store, rows = run({**spec, "label_colors": {**spec["label_colors"], "other": 0}})
    expected = np.zeros((4, 5), np.uint8)
    expected[0, 0], expected[1, 1] = 1, 3
    np.testing.assert_array_equal(store.label("a"), expected)


def test_label_map_ranges_other_and_pass_through():
    values = np.array([[0, 1, 25, 100], [101, 201, 225, 7000]], np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 2, 4), np.int16)), "img_1.mha")
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([values, values])), "lab_1.mha")
    spec = {"ndim": 3, "images": "img_*.mha", "labels": "lab_*.mha", "case_id": r"_(?P<case>\d+)\.mha",
            "label_map": {"1-25": 1, "101-125": 1, "100": 2, "201-225": 3},
            "classes": {1: "vertebrae", 2: "canal", 3: "disc"}}
    _, store, rows = run(spec)
    assert "label values not in classes [1, 2, 3]: [7000]" in rows[0].problem  # unlisted: checked
    _, store, rows = run({**spec, "label_map": {**spec["label_map"], "other": 0}})
    np.testing.assert_array_equal(store.label("1")[0], [[0, 1, 1, 2], [1, 3, 3, 0]])


# ------------------------------------------------------------------ channels, crops and axes


def test_channels_first_mha_is_a_colour_image():
    """jnu-ifm: a (3, H, W) scalar volume in a 2D dataset is an RGB image."""
    rgb = np.stack([np.full((5, 6), v, np.uint8) for v in (10, 20, 30)])
    sitk.WriteImage(sitk.GetImageFromArray(rgb), "00001.mha")
    os.makedirs("lab")
    sitk.WriteImage(sitk.GetImageFromArray(box((5, 6), slice(0, 2), slice(0, 2), 2)), "lab/00001.mha")
    spec = {"images": "*.mha", "labels": "lab/*.mha", "classes": {1: "ps", 2: "head"}}
    _, store, rows = run(spec)
    assert store.case_ids == [] and "but the dataset is 2D" in rows[0].problem
    _, store, rows = run({**spec, "channel_axis": "first"})
    assert store.image("00001").shape == (5, 6, 3) and list(store.image("00001")[0, 0]) == [10, 20, 30]


def test_crop_reads_image_and_label_from_one_side_by_side_file():
    """OIMHS: B-scan left, colour mask right, in one RGB PNG; case `<eye>_<scan>`."""
    scan = np.zeros((4, 8, 3), np.uint8)
    scan[:, :4] = 77
    scan[2, 5] = (255, 0, 0)
    png("Images/7/12.png", scan)
    spec = {"images": "Images/*/*.png", "labels": "Images/*/*.png", "ids_from": "relpath",
            "case_id": r"^(?P<eye>[^/]+)/(?P<scan>[^/.]+)\.png$", "case_format": "{eye}_{scan}",
            "patient_id": r"^(?P<patient>[^/]+)/", "crop": {"image": {"x": [0, 4]}, "label": {"x": [4, 8]}},
            "label_colors": {"255,0,0": 4, "other": 0}, "classes": {4: "hole"}}
    _, store, rows = run(spec)
    assert rows == [] and store.case_ids == ["7_12"] and store.info("7_12").patient_id == "7"
    assert store.image("7_12").shape == (4, 4, 3) and (store.image("7_12") == 77).all()
    assert store.label("7_12")[2, 1] == 4 and store.label("7_12").sum() == 4


def test_axes_permutation_follows_the_reference_slicing():
    """KiTS stores the slice index as NIfTI voxel axis i: `axes: xyz` makes it the store's z."""
    voxels = image(7, (5, 6, 7)).astype(np.int16)  # nibabel (i, j, k)
    os.makedirs("case_00000")
    nib.save(nib.Nifti1Image(voxels, np.diag([0.5, 0.7, 2.0, 1])), "case_00000/imaging.nii.gz")
    label = np.zeros((5, 6, 7), np.uint8)
    label[1, 2, 3] = 1
    nib.save(nib.Nifti1Image(label, np.diag([0.5, 0.7, 2.0, 1])), "case_00000/segmentation.nii.gz")
    spec = {"ndim": 3, "images": "*/imaging.nii.gz", "labels": "*/segmentation.nii.gz", "ids_from": "relpath",
            "case_id": r"^(?P<case>case_\d+)/", "axes": "xyz"}
    _, store, rows = run(spec)
    np.testing.assert_array_equal(store.image("case_00000"), voxels)  # store (z, y, x) = voxel (i, j, k)
    assert store.label("case_00000")[1, 2, 3] == 1 and store.info("case_00000").spacing == (0.5, 0.7, 2.0)


def test_npy_volume_and_pgm_images_are_read_directly():
    os.makedirs("Dataset/P1")
    np.save("Dataset/P1/data.npy", image(8, (4, 6, 5)).astype(np.int16))
    np.save("Dataset/P1/gt_alpha.npy", box((4, 6, 5), slice(1, 2), slice(0, 3)))
    _, store, rows = run({"ndim": 3, "images": "Dataset/*/data.npy", "labels": "Dataset/*/gt_alpha.npy",
                          "ids_from": "relpath", "case_id": r"^(?P<case>P\d+)/"})
    assert rows == [] and store.image("P1").shape == (4, 6, 5) and store.info("P1").spacing == (1.0, 1.0, 1.0)
    from PIL import Image

    Image.fromarray(image(9)).save("1.pgm")
    Image.fromarray(box((8, 10), slice(0, 2), slice(0, 2), 255)).save("1_gt.pgm")
    _, store, rows = run({"images": "*[0-9].pgm", "labels": "*_gt.pgm", "case_id": r"^(?P<case>\d+)(_gt)?\.pgm$",
                          "label_map": {"255": 1}}, name="pgm")
    np.testing.assert_array_equal(store.image("1"), image(9))
    assert rows == [] and store.label("1").sum() == 4


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("change, message", [
    ({"label_kind": "instances", "roles": ["interactive2d"]}, "only for role finetune"),
    ({"labels": {"glob": "x/*", "merge": "instance_per_file"}}, "need label_kind: instances"),
    ({"labels": {"glob": "x/*", "merge": "class_per_file"}}, "needs labels.class_name"),
    ({"stack": True}, "stack: true builds volumes"),
    ({"layout": "sa_med2d", "index": "x.json", "images": "a/*"}, "should not be valid"),
    ({"layout": "sa_med2d"}, "'root' is a required property"),
    ({"label_map": {"a-b": 1}}, "label_map"),
])
def test_bad_dataset_entries_are_config_errors(change, message):
    spec = {"modality": "ct", "ndim": 2, "images": "x/*", "labels": "y/*", "classes": {1: "a"}, **change}
    if change.get("layout") == "sa_med2d" and "images" not in change:
        spec.pop("images"), spec.pop("labels")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({"datasets": {"d": spec}})


# --------------------------------------------------------------------------- SA-Med2D adapter


def write_corpus(root, entries, masks, images):
    """``entries``: {image name: [mask names]}; ``masks``/``images``: {name: array} files to write."""
    for name, array in images.items():
        png(f"{root}/images/{name}", array)
    for name, array in masks.items():
        png(f"{root}/masks/{name}", array)
    (root / "SAMed2D_v1.json").write_text(json.dumps(
        {f"images/{k}": [f"masks/{m}" for m in v] for k, v in entries.items()}, indent=1))


SA_SPEC = {"layout": "sa_med2d", "ndim": 2, "label_kind": "instances", "classes": {1: "object"},
           "roles": ["finetune"], "modality": "ct"}


def test_sa_med2d_rules(in_tmp):
    """Sorted order and overwrite, ACDC's cavity skipped, ichallenge_adam_task2 inverted, a mask of
    another shape skipped, empty and constant images and missing files quarantined."""
    root = in_tmp / "SAMed2Dv1"
    shape = (6, 8)
    ct, acdc, adam = ("ct_00--AbdomenCT1K--Case_00001--z_0010", "mr_cmr--ACDC--patient001_frame01--z_0003",
                      "fundus_photography--ichallenge_adam_task2--A0001--x_0000")
    entries = {
        f"{ct}.png": [f"{ct}--0001_001.png", f"{ct}--0000_000.png", f"{ct}--0001_000.png"],
        f"{acdc}.png": [f"{acdc}--0001_000.png", f"{acdc}--0003_000.png", f"{acdc}--0002_000.png"],
        f"{adam}.png": [f"{adam}--0001_000.png"],
        "x_ray--crass--CHNCXR_0001--x_0000.png": ["x_ray--crass--CHNCXR_0001--x_0000--0001_000.png"],
        "ct_00--KiTS--case_1--z_0001.png": ["ct_00--KiTS--case_1--z_0001--0001_000.png"],
        "ct_00--KiTS--case_2--z_0001.png": ["ct_00--KiTS--case_2--z_0001--0001_000.png",
                                            "ct_00--KiTS--case_2--z_0001--0002_000.png"],
    }
    masks = {
        f"{ct}--0000_000.png": box(shape, slice(0, 4), slice(0, 4), 255),   # id 1
        f"{ct}--0001_000.png": box(shape, slice(2, 6), slice(2, 6), 255),   # id 2 overwrites 1
        f"{ct}--0001_001.png": box(shape, slice(0, 1), slice(7, 8), 255),   # id 3
        f"{acdc}--0001_000.png": box(shape, slice(0, 2), slice(0, 2), 255),
        f"{acdc}--0002_000.png": box(shape, slice(4, 6), slice(4, 6), 255),
        f"{acdc}--0003_000.png": np.full(shape, 255, np.uint8),              # the cavity: skipped
        f"{adam}--0001_000.png": 1 - box(shape, slice(1, 3), slice(1, 3)),   # disc stored as 0
        "x_ray--crass--CHNCXR_0001--x_0000--0001_000.png": box(shape, slice(0, 2), slice(0, 2), 255),
        "ct_00--KiTS--case_1--z_0001--0001_000.png": box((5, 8), slice(0, 2), slice(0, 2), 255),  # other shape
        "ct_00--KiTS--case_2--z_0001--0001_000.png": box(shape, slice(0, 2), slice(0, 2), 255),
    }
    images = {f"{ct}.png": image(1, shape), f"{acdc}.png": image(2, shape),
              f"{adam}.png": np.stack([image(3, shape)] * 3, -1),
              "x_ray--crass--CHNCXR_0001--x_0000.png": np.full(shape, 7, np.uint8),  # constant
              "ct_00--KiTS--case_1--z_0001.png": image(4, shape), "ct_00--KiTS--case_2--z_0001.png": image(5, shape)}
    write_corpus(root, entries, masks, images)
    _, store, rows = run({**SA_SPEC, "index": "SAMed2Dv1/SAMed2D_v1.json"})
    refused = problems(rows)
    assert store.case_ids == sorted([ct, acdc, adam])
    expected = np.zeros(shape, np.uint16)
    expected[0:4, 0:4] = 1
    expected[2:6, 2:6] = 2
    expected[0, 7] = 3
    np.testing.assert_array_equal(store.label(ct), expected)
    assert store.info(ct).attrs["instance_masks"] == [f"masks/{ct}--0000_000.png", f"masks/{ct}--0001_000.png",
                                                      f"masks/{ct}--0001_001.png"]
    assert store.info(ct).patient_id == "AbdomenCT1K--Case_00001"
    acdc_label = store.label(acdc)
    assert set(np.unique(acdc_label)) == {0, 1, 2} and acdc_label[0, 0] == 1 and acdc_label[5, 5] == 2
    assert all("0003_000" not in m for m in store.info(acdc).attrs["instance_masks"])
    np.testing.assert_array_equal(store.label(adam), box(shape, slice(1, 3), slice(1, 3)))
    assert store.image(adam).shape == (6, 8, 3)
    assert "constant image" in refused["x_ray--crass--CHNCXR_0001--x_0000"]
    assert "empty label" in refused["ct_00--KiTS--case_1--z_0001"]  # its only mask had another shape
    assert "mask listed in the index does not exist" in refused["ct_00--KiTS--case_2--z_0001"]
    assert "0002_000.png" in refused["ct_00--KiTS--case_2--z_0001"]
    # include selects a modality; the dataset field is parsed, never a substring test
    _, store, rows = run({**SA_SPEC, "index": "SAMed2Dv1/SAMed2D_v1.json", "include": "^ct_"}, name="ct")
    assert store.case_ids == [ct] and len(rows) == 2


def test_sa_med2d_image_listed_twice_is_refused_once(in_tmp):
    root = in_tmp / "SAMed2Dv1"
    name = "ct_00--Src--c1--z_0001"
    write_corpus(root, {f"{name}.png": [f"{name}--0001_000.png"]}, {f"{name}--0001_000.png": box((4, 4), 0, 0, 255)},
                 {f"{name}.png": image(1, (4, 4))})
    text = (root / "SAMed2D_v1.json").read_text()
    (root / "SAMed2D_v1.json").write_text(text.rstrip().rstrip("}") + f', "images/{name}.png": '
                                          f'["masks/{name}--0001_000.png"]}}')
    _, store, rows = run({**SA_SPEC, "index": "SAMed2Dv1/SAMed2D_v1.json"})
    assert store.case_ids == [name] and store.label(name)[0, 0] == 1
    assert len(rows) == 1 and "listed again" in rows[0].problem


def test_index_is_streamed_in_blocks_with_escapes_and_odd_spacing(in_tmp):
    entries = {f"images/é\"{i}.png": [f"masks/m{i}\\u{j}.png" for j in range(i % 3)] for i in range(50)}
    text = json.dumps(entries, indent=None, separators=(" ,\n ", " :  "))
    (in_tmp / "i.json").write_text(text)
    assert list(iter_index(in_tmp / "i.json", block=7)) == list(entries.items())
    (in_tmp / "bad.json").write_text(text[:-10])
    with pytest.raises(ValueError, match="bad.json"):
        list(iter_index(in_tmp / "bad.json", block=7))


# ---------------------------------------------------------------------------- store index


def test_store_case_index_and_reading_format_1(in_tmp):
    with StoreWriter("s.zarr", "s", "ct", 2, {1: "a"}) as writer:
        for case, patient in (("b", "p1"), ("a", "p2"), ("é", "p1")):
            writer.write_case(case, np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8), patient_id=patient,
                              modality="ct", spacing=(1, 1))
        writer.publish()
    store = DatasetStore("s.zarr")
    cases, patients = store.case_index()
    assert cases.tolist() == [b"a", b"b", "é".encode()] and patients.tolist() == [b"p2", b"p1", b"p1"]
    assert store.case_ids == ["a", "b", "é"] and store.case_count == 3 and "case_ids" not in store._attrs
    assert not list(in_tmp.glob("*.ids"))
    import zarr

    root = zarr.open_group("s.zarr", mode="r+")  # a store written before the index existed
    root.attrs.update({"medpipe": {"format_version": 1, "complete": True}, "case_ids": ["a", "b", "é"]})
    del root["index"]
    old = DatasetStore("s.zarr")
    assert old.case_ids == ["a", "b", "é"] and old.case_index()[1].tolist() == [b"p2", b"p1", b"p1"]


def test_finetune_objects_are_the_stored_instances():
    from medpipe.finetune.data import objects_of

    label = np.zeros((6, 6), np.uint16)
    label[0:2, 0:2] = 3      # one instance
    label[4:6, 0:2] = 3      # ... in two pieces: still one object
    label[0:3, 3:6] = 7
    label[5, 5] = 9          # below min_px
    objects, n = objects_of(label, min_px=2, instances=True)
    assert n == 2 and set(np.unique(objects[label == 3])) == {1} and set(np.unique(objects[label == 7])) == {2}
    assert objects[5, 5] == 0
    assert objects_of(label, min_px=2, instances=False)[1] == 3  # as classes: connected components
