"""The SA-Med2D corpus ingest in parts (medpipe.data.corpus) on generated miniatures: zip and folder
give byte-identical packed stores, the packed store reads like the per-case one, the object table,
a killed part reruns alone, escaping names are refused, and the file count does not grow per case."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medpipe.data.corpus import gather_corpus, ingest_part, part_file, plan_corpus, read_members
from medpipe.data.ingest import ingest_dataset
from medpipe.data.objects import ObjectTable
from medpipe.io.quarantine import read_quarantine
from medpipe.store import DatasetStore
from medpipe.synth.sa_med2d import write_corpus

SPEC = {"layout": "sa_med2d", "modality": "other", "ndim": 2, "label_kind": "instances", "classes": {1: "object"}}


def run_parts(root: Path, out: Path, parts: int = 3, name: str = "sa", image_shard: int | None = None) -> Path:
    spec = dict(SPEC, root=str(root))
    plan_corpus(name, spec, parts, out / "plan")
    folders = [out / f"part{k}" for k in range(parts)]
    for k, folder in enumerate(folders):
        ingest_part(name, spec, out / "plan", k, folder, image_shard=image_shard)
    gather_corpus(name, spec, folders, out / f"{name}.zarr", out / "quarantine.tsv")
    return out / f"{name}.zarr"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same 24-image corpus zipped and unpacked."""
    base = tmp_path_factory.mktemp("corpus")
    write_corpus(base / "zipped", 24, seed=1, largest=64, per_case=4)
    write_corpus(base / "folder", 24, seed=1, largest=64, per_case=4, zipped=False)
    return base


def test_zip_and_folder_give_byte_identical_stores(corpus, tmp_path):
    from_zip = run_parts(corpus / "zipped", tmp_path / "z")
    from_folder = run_parts(corpus / "folder", tmp_path / "f")
    a, b = files_of(from_zip), files_of(from_folder)
    assert a == b and len(a) > 10
    store = DatasetStore(from_zip)
    assert store.layout == "packed" and store.case_count == 24
    assert not (corpus / "zipped" / "SAMed2Dv1").exists()  # nothing was extracted


def test_packed_store_reads_like_the_per_case_store(corpus, tmp_path):
    packed = DatasetStore(run_parts(corpus / "folder", tmp_path / "p", parts=2))
    spec = dict(SPEC, index=str(corpus / "folder" / "SAMed2Dv1" / "SAMed2D_v1.json"))
    ingest_dataset("sa", spec, tmp_path / "cases.zarr", tmp_path / "cases.tsv")
    cases = DatasetStore(tmp_path / "cases.zarr")
    assert cases.layout == "cases"
    for x, y in zip(packed.case_index(), cases.case_index()):
        np.testing.assert_array_equal(x, y)
    for case_id in cases.case_ids:
        a, b = packed.image(case_id), cases.image(case_id)
        assert a.dtype == b.dtype and a.shape == b.shape and a.ndim == 3  # grey stored once, given back as RGB
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(packed.label(case_id), cases.label(case_id))
        assert packed.image_array(case_id).shape == cases.image_array(case_id).shape
        np.testing.assert_array_equal(packed.image_array(case_id)[2:5, 1:3], cases.image_array(case_id)[2:5, 1:3])
        assert packed.info(case_id).patient_id == cases.info(case_id).patient_id
    modalities = dict(zip(packed.case_ids, (m.decode() for m in packed.case_modalities())))
    assert modalities["ct_00--AbdomenCT1K--case_00000--z_0000"] == "ct"
    assert modalities["mr_t1--BraTS2021--case_00001--z_0000"] == "mri"
    assert set(cases.case_modalities().tolist()) == {b"other"}  # per-case store: the entry's modality
    # the object table of both layouts is the table built over the labels
    expected = ObjectTable.build(((row, -1, cases.label(c)) for row, c in enumerate(cases.case_ids)), True)
    for table in (packed.object_table(), cases.object_table()):
        for name, values in expected.to_arrays().items():
            np.testing.assert_array_equal(getattr(table, name), values, err_msg=name)
    for row, case_id in enumerate(cases.case_ids):  # by row (the object table's `case`), both layouts
        np.testing.assert_array_equal(packed.image_at(row), cases.image_at(row))
        np.testing.assert_array_equal(packed.label_at(row), cases.label_at(row))
        np.testing.assert_array_equal(packed.image_at(row, grey=True), cases.image(case_id)[..., 0])
    grey = zarr_column(packed.path, "grey")
    assert grey.all()  # the generated images have identical channels


def zarr_column(path: Path, name: str) -> np.ndarray:
    import zarr

    return zarr.open_group(str(path), mode="r")["columns"][name][...]


def test_object_table_of_a_volume_store_has_one_row_per_slice_with_objects(tmp_path):
    from medpipe.store import StoreWriter

    label = np.zeros((3, 6, 6), np.uint8)
    label[0, 1:3, 1:3] = 1
    label[2, 0:2, 4:6] = 2
    label[2, 4:6, 0:1] = 2
    with StoreWriter(tmp_path / "v.zarr", "v", "ct", 3, {1: "a", 2: "b"}) as writer:
        writer.write_case("c1", np.zeros((3, 6, 6), np.int16), label, patient_id="p", modality="ct", spacing=(1, 1, 1))
        writer.write_case("c0", np.zeros((2, 6, 6), np.int16), np.zeros((2, 6, 6), np.uint8), patient_id="p",
                          modality="ct", spacing=(1, 1, 1))
        writer.publish()
    table = DatasetStore(tmp_path / "v.zarr").object_table()
    assert table.case.tolist() == [1, 1] and table.z.tolist() == [0, 2]  # c1 is row 1 of the sorted index
    assert table.count.tolist() == [1, 2] and table.area.tolist() == [4, 4, 2]


def test_a_store_without_object_table_reads_none(tmp_path):
    import zarr

    from medpipe.store import StoreWriter

    with StoreWriter(tmp_path / "s.zarr", "s", "ct", 2, {1: "a"}) as writer:
        writer.write_case("c", np.zeros((4, 4), np.uint8), np.eye(4, dtype=np.uint8), patient_id="p",
                          modality="ct", spacing=(1, 1))
        writer.publish()
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").__delitem__("objects")  # as written before the table
    assert DatasetStore(tmp_path / "s.zarr").object_table() is None


def test_a_killed_part_reruns_alone(corpus, tmp_path):
    spec = dict(SPEC, root=str(corpus / "zipped"))
    reference = files_of(run_parts(corpus / "zipped", tmp_path / "ref"))
    out = tmp_path / "run"
    plan_corpus("sa", spec, 3, out / "plan")
    folders = [out / f"part{k}" for k in range(3)]
    for k in (0, 2):
        ingest_part("sa", spec, out / "plan", k, folders[k])
    untouched = {k: os.stat(folders[k] / "zarr.json").st_mtime_ns for k in (0, 2)}
    # part 1 was killed half-way: a partial folder of a process that no longer runs, no part folder
    (out / "part1.partial-999999999" / "image").mkdir(parents=True)
    ingest_part("sa", spec, out / "plan", 1, folders[1])
    assert not (out / "part1.partial-999999999").exists()
    gather_corpus("sa", spec, folders, out / "sa.zarr", out / "quarantine.tsv")
    assert files_of(out / "sa.zarr") == reference
    assert {k: os.stat(folders[k] / "zarr.json").st_mtime_ns for k in (0, 2)} == untouched


def test_a_failing_part_publishes_nothing(corpus, tmp_path, monkeypatch):
    spec = dict(SPEC, root=str(corpus / "zipped"))
    plan_corpus("sa", spec, 2, tmp_path / "plan")
    import medpipe.data.packed as packed

    monkeypatch.setattr(packed.PartWriter, "finish", lambda self, rows: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        ingest_part("sa", spec, tmp_path / "plan", 0, tmp_path / "part0")
    assert not (tmp_path / "part0").exists() and not list(tmp_path.glob("part0.partial-*"))


def _zip_with(path: Path, index: dict, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("SAMed2Dv1/SAMed2D_v1.json", json.dumps(index))
        for name, data in members.items():
            archive.writestr(name, data)


def test_escaping_names_are_refused_by_name(corpus, tmp_path):
    good = zipfile.ZipFile(corpus / "zipped" / "data.zip")
    index = json.loads(good.read("SAMed2Dv1/SAMed2D_v1.json"))
    first, second, third = list(index)[:3]
    members = {n: good.read(n) for n in good.namelist() if n != "SAMed2Dv1/SAMed2D_v1.json"}
    secret = members[f"SAMed2Dv1/{first}"]
    members["secret.png"] = secret  # outside SAMed2Dv1/
    hostile = {first: index[first], "../secret.png": index[second], third: ["/etc/passwd"]}
    (tmp_path / "z").mkdir()
    _zip_with(tmp_path / "z" / "data.zip", hostile, members)
    store = DatasetStore(run_parts(tmp_path / "z", tmp_path / "out", parts=2))
    assert store.case_ids == [first.split("/")[1][:-4]]
    rows = {row.case_id: row.problem for row in read_quarantine(tmp_path / "out" / "quarantine.tsv")}
    assert len(rows) == 2
    assert any("'../secret.png'" in problem and "leaves the dataset folder" in problem for problem in rows.values())
    assert any("'/etc/passwd'" in problem for problem in rows.values())


def test_a_symlink_out_of_the_folder_is_refused(corpus, tmp_path):
    root = tmp_path / "rel"
    shutil.copytree(corpus / "folder", root)
    index = json.loads((root / "SAMed2Dv1" / "SAMed2D_v1.json").read_text())
    key = next(iter(index))
    outside = tmp_path / "outside.png"
    (root / "SAMed2Dv1" / key).rename(outside)
    (root / "SAMed2Dv1" / key).symlink_to(outside)
    store = DatasetStore(run_parts(root, tmp_path / "out", parts=1))
    assert store.case_count == len(index) - 1
    [row] = read_quarantine(tmp_path / "out" / "quarantine.tsv")
    assert "outside" in row.problem and row.case_id == key.split("/")[1][:-4]


def test_missing_and_corrupt_members_are_quarantined(corpus, tmp_path):
    good = zipfile.ZipFile(corpus / "zipped" / "data.zip")
    index = json.loads(good.read("SAMed2Dv1/SAMed2D_v1.json"))
    keys = list(index)
    members = {n: good.read(n) for n in good.namelist() if n != "SAMed2Dv1/SAMed2D_v1.json"}
    del members[f"SAMed2Dv1/{keys[0]}"]
    members[f"SAMed2Dv1/{index[keys[1]][0]}"] = b"\x89PNG not really"
    (tmp_path / "z").mkdir()
    _zip_with(tmp_path / "z" / "data.zip", index, members)
    run_parts(tmp_path / "z", tmp_path / "out", parts=2)
    rows = {row.case_id: row.problem for row in read_quarantine(tmp_path / "out" / "quarantine.tsv")}
    assert "image listed in the index does not exist" in rows[keys[0].split("/")[1][:-4]]
    assert "not a readable image" in rows[keys[1].split("/")[1][:-4]]


def test_the_plan_is_the_same_from_zip_and_folder_and_splits_by_name(corpus, tmp_path):
    plan_corpus("sa", dict(SPEC, root=str(corpus / "zipped")), 3, tmp_path / "a")
    plan_corpus("sa", dict(SPEC, root=str(corpus / "folder")), 3, tmp_path / "b")
    for k in range(3):
        a = [json.loads(line) for line in (tmp_path / "a" / part_file(k)).read_text().splitlines()]
        b = [json.loads(line) for line in (tmp_path / "b" / part_file(k)).read_text().splitlines()]
        assert a == b and a
        # the part's member file holds exactly its images and masks: no part holds the whole member table
        members = read_members(tmp_path / "a", k)
        assert set(members) == {f"SAMed2Dv1/{n}" for r in a for n in (r["key"], *r["masks"])}
    summary = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert sum(summary["images"]) == 24 and summary["source"]["kind"] == "zip"
    assert summary["source"]["base"] == "SAMed2Dv1" and summary["stray_members"] == 0


def test_members_not_named_after_their_image_are_placed_by_the_index(corpus, tmp_path):
    good = zipfile.ZipFile(corpus / "zipped" / "data.zip")
    index = json.loads(good.read("SAMed2Dv1/SAMed2D_v1.json"))
    members = {n: good.read(n) for n in good.namelist() if n != "SAMed2Dv1/SAMed2D_v1.json"}
    key = next(iter(index))
    old = index[key][0]
    members["SAMed2Dv1/masks/renamed.png"] = members.pop(f"SAMed2Dv1/{old}")
    index[key] = ["masks/renamed.png", *index[key][1:]]
    (tmp_path / "z").mkdir()
    _zip_with(tmp_path / "z" / "data.zip", index, members)
    store = DatasetStore(run_parts(tmp_path / "z", tmp_path / "out", parts=3))
    assert store.case_count == 24 and not read_quarantine(tmp_path / "out" / "quarantine.tsv")
    assert json.loads((tmp_path / "out" / "plan" / "plan.json").read_text())["stray_members"] == 1


def test_the_central_directory_stream_equals_zipfile(tmp_path):
    """Including a zip64 end record (more than 65535 members) and a deflated index read as a stream."""
    from medpipe.io.layouts.sa_med2d_release import Member, iter_members, open_member_text, zip64_extra

    path = tmp_path / "big.zip"
    text = json.dumps({f"images/x{k}.png": [f"masks/x{k}--0000_000.png"] for k in range(3000)})
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(66_000):
            archive.writestr(f"SAMed2Dv1/masks/x{k}--0000_000.png", b"m" * (k % 7))
        archive.writestr("SAMed2Dv1/SAMed2D_v1.json", text, compress_type=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as archive:
        expected = {i.filename: [i.header_offset, i.compress_size, i.file_size, i.compress_type, i.CRC]
                    for i in archive.infolist()}
    got = {name: list(where) for name, where in iter_members(path, block=1 << 16)}
    assert got == expected and len(got) > 65535
    member = Member(*next(w for n, w in iter_members(path) if n.endswith(".json")))
    assert open_member_text(str(path), "SAMed2Dv1/SAMed2D_v1.json", member).read() == text
    extra = b"\x99\x99\x02\x00ab" + (1).to_bytes(2, "little") + (16).to_bytes(2, "little") + \
        (5 << 32).to_bytes(8, "little") + (7 << 33).to_bytes(8, "little")
    assert zip64_extra(extra, 10, 0xFFFFFFFF, 0xFFFFFFFF) == (10, 5 << 32, 7 << 33)


def test_file_count_does_not_grow_with_the_cases(tmp_path):
    """Packed: the same number of files for 12 and for 48 images (shards hold many images); the
    per-case layout adds files with every case."""
    counts = {}
    for n in (12, 48):
        write_corpus(tmp_path / f"c{n}", n, seed=2, largest=48, per_case=4)
        store = run_parts(tmp_path / f"c{n}", tmp_path / f"o{n}", parts=2)
        counts[n] = sum(1 for p in store.rglob("*") if p.is_file())
    assert counts[12] == counts[48]


def test_shards_fill_before_a_new_file_is_made(tmp_path):
    """With small shards a part's image array has one file per shard of pixels, whole shards written."""
    write_corpus(tmp_path / "c", 20, seed=3, largest=32, per_case=5)
    store = run_parts(tmp_path / "c", tmp_path / "o", parts=1, image_shard=4096)
    shards = [p for p in (store / "parts" / "0" / "image").rglob("*") if p.is_file() and p.name != "zarr.json"]
    pixels = int(zarr_column(store, "height").astype(int) @ zarr_column(store, "width").astype(int))
    assert len(shards) == -(-pixels // 4096)
    reread = DatasetStore(store)
    for case_id in reread.case_ids:  # images that straddle shard boundaries read back whole
        assert reread.image(case_id).shape[:2] == reread.label(case_id).shape


@pytest.mark.parametrize("mode", ["L", "RGB", "1", "P", "I;16", "LA"])
def test_png_decoding_matches_the_file_reader(mode, tmp_path):
    """The corpus path decodes PNG bytes exactly as ingest reads PNG files (imageio)."""
    from PIL import Image

    from medpipe.io.layouts.sa_med2d_release import decode_png
    from medpipe.io.readers import read_image

    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (9, 7, 3), dtype=np.uint8))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(rng.integers(0, 60000, (9, 7)).astype(np.uint16))
    image.save(tmp_path / "x.png")
    expected, _ = read_image(tmp_path / "x.png")
    got = decode_png((tmp_path / "x.png").read_bytes(), "x.png")
    assert got.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_generated_corpus_is_reproducible_and_release_like(tmp_path):
    a = write_corpus(tmp_path / "a", 40, seed=5, largest=64, per_case=5)
    write_corpus(tmp_path / "b", 40, seed=5, largest=64, per_case=5)
    assert (tmp_path / "a" / "data.zip").read_bytes() == (tmp_path / "b" / "data.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a" / "data.zip") as archive:
        index = json.loads(archive.read("SAMed2Dv1/SAMed2D_v1.json"))
        assert len(index) == 40 and sum(map(len, index.values())) == a["masks"]
        assert all(1 <= len(masks) <= 15 for masks in index.values())
        for key, masks in list(index.items())[:4]:
            from medpipe.io.layouts.sa_med2d_release import decode_png

            image = decode_png(archive.read(f"SAMed2Dv1/{key}"), key)
            assert image.ndim == 3 and (image[..., 0] == image[..., 2]).all()  # 3 identical channels
            mask = decode_png(archive.read(f"SAMed2Dv1/{masks[0]}"), masks[0])
            assert mask.shape == image.shape[:2] and set(np.unique(mask).tolist()) <= {0, 255}
            assert masks[0].startswith(key.replace("images/", "masks/")[:-4] + "--")
    sizes = {tuple(s) for s in a["sizes"]}
    assert (64, 64) in sizes and len(sizes) == 4
