"""Bounded cost of hostile inputs (issue 19, item 6): alias bombs, huge declared images, huge names."""

import logging
import time

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from medpipe.config import ConfigError, read_config_file, validate_config
from medpipe.io import readers
from medpipe.io.quarantine import QuarantineRow, read_quarantine, write_quarantine

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB + "seed: 0\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: \(top level\): more than 200000 values once its YAML aliases"):
        read_config_file(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 5


def test_a_config_dict_sharing_lists_and_a_recursive_alias_are_refused():
    shared = ["x"] * 10
    for _ in range(8):
        shared = [shared] * 10  # what Snakemake's YAML reader builds from the bomb
    with pytest.raises(ConfigError, match="YAML aliases"):
        validate_config({"datasets": {}, "bomb": shared}, source="c.yaml")
    loop: list = []
    loop.append(loop)
    with pytest.raises(ConfigError, match="an alias of itself"):
        validate_config({"loop": loop}, source="c.yaml")


def write_all_formats(folder):
    image = np.zeros((64, 64), np.uint8)
    iio.imwrite(folder / "a.png", image)
    import tifffile

    tifffile.imwrite(folder / "a.tif", image, tile=(16, 16))
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 4), np.int16), np.eye(4)), str(folder / "a.nii.gz"))
    np.save(folder / "a.npy", np.zeros((4, 64, 64), np.int16))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 64, 64), np.int16)), str(folder / "a.mha"))
    return ["a.png", "a.tif", "a.nii.gz", "a.npy", "a.mha"]


def test_every_reader_refuses_a_declared_size_above_the_limit_before_reading_pixels(tmp_path, monkeypatch):
    names = write_all_formats(tmp_path)
    try:
        for name in names:  # the default limit (2 GiB) admits them
            readers.read_image(tmp_path / name)
        readers.set_max_image_bytes(4000)  # each declares 4096 or more bytes
        import tifffile

        monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: pytest.fail("pixels read"))
        for name in names:
            with pytest.raises(readers.ReadError, match=rf"{name}: declares .* more than ingest\.max_image_bytes"):
                readers.read_image(tmp_path / name)
    finally:
        readers.set_max_image_bytes(None)


def test_a_huge_tiff_header_is_quarantined_by_ingest_with_the_configured_limit(tmp_path, monkeypatch):
    import tifffile

    from medpipe.data.ingest import ingest_dataset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(readers, "_max_image_bytes", None)  # ingest sets it: restored after the test
    for kind in ("images", "labels"):
        (tmp_path / kind).mkdir()
    for i in range(2):
        label = np.zeros((32, 32), np.uint8)
        label[8:16, 8:16] = 1
        tifffile.imwrite(tmp_path / f"images/p{i}.tif", np.full((32, 32), i, np.uint8) + label)
        tifffile.imwrite(tmp_path / f"labels/p{i}.tif", label)
    tifffile.imwrite(tmp_path / "images/p1.tif", np.zeros((64, 64), np.uint8))  # larger than the limit
    spec = {"modality": "xray", "ndim": 2, "images": "images/*.tif", "labels": "labels/*.tif", "classes": {1: "a"}}
    chunks = {"chunks_2d": [16, 16], "chunks_3d": [4, 16, 16], "max_image_bytes": 2000}
    report = ingest_dataset("ds", spec, tmp_path / "ds.zarr", tmp_path / "q.tsv", chunks)
    assert report.n_cases == 1
    (row,) = read_quarantine(tmp_path / "q.tsv")
    assert row.case_id == "p1" and "declares (64, 64) uint8" in row.problem and "max_image_bytes" in row.problem


def test_names_and_messages_are_shortened_in_logs_and_tables(tmp_path, caplog):
    from medpipe.data import ingest

    name = "n" * 5_000_000
    rows = [QuarantineRow("ds", name, f"images/{name}.png", "", f"images/{name}.png: not a readable image")]
    write_quarantine(tmp_path / "q.tsv", rows)
    assert (tmp_path / "q.tsv").stat().st_size < 20_000
    (row,) = read_quarantine(tmp_path / "q.tsv")
    assert "(5000000 characters)" in row.case_id and len(row.case_id) <= 4000
    assert f"({len(rows[0].image)} characters)" in row.image
    with caplog.at_level(logging.WARNING):
        ingest.log.warning("%s: quarantined case %r: %s", "ds", ingest.shorten(name), ingest.shorten(rows[0].problem))
    assert max(len(r.getMessage()) for r in caplog.records) < 10_000
