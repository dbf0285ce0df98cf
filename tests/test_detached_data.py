"""Inputs stay in their folder (issue 19, item 5): MHD/NRRD detached data files."""

import numpy as np
import pytest
import SimpleITK as sitk

from medpipe.data.ingest import ingest_dataset
from medpipe.io import readers
from medpipe.io.quarantine import read_quarantine
from medpipe.store import DatasetStore


def write_mhd(folder, name, array, data_name=None):
    """``name.mhd`` + ``name.raw`` (written by SimpleITK), the header's data file renamed when asked."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / f"{name}.mhd"))
    if data_name is not None:
        header = (folder / f"{name}.mhd").read_text().replace(f"ElementDataFile = {name}.raw",
                                                              f"ElementDataFile = {data_name}")
        (folder / f"{name}.mhd").write_text(header)
    return folder / f"{name}.mhd"


@pytest.mark.parametrize("data_name, words", [
    ("../secret/s.raw", "leaves the dataset folder"), ("/tmp/elsewhere.raw", "not a relative path"),
    ("link/s.raw", "outside"), ("LIST", "a list of data files"),
])
def test_a_header_naming_a_data_file_outside_its_folder_is_refused_by_name(tmp_path, data_name, words):
    volume = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5)
    write_mhd(tmp_path / "secret", "s", volume)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "link").symlink_to(tmp_path / "secret")
    header = write_mhd(tmp_path / "images", "p0", volume, data_name)
    with pytest.raises(readers.ReadError, match=rf"p0\.mhd: .*{words}"):
        readers.read_image(header)


def test_nrrd_detached_data_outside_is_refused(tmp_path):
    (tmp_path / "a.nhdr").write_text("NRRD0004\ntype: short\ndimension: 2\nsizes: 2 2\nencoding: raw\n"
                                     "data file: ../b.raw\n\n")
    with pytest.raises(readers.ReadError, match=r"a\.nhdr: .*leaves the dataset folder"):
        readers.read_image(tmp_path / "a.nhdr")


def test_the_detached_data_file_is_part_of_the_recorded_sha256(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    label = np.zeros((2, 8, 8), np.uint8)
    label[:, 2:5, 2:5] = 1
    write_mhd(tmp_path / "images", "p0", np.full((2, 8, 8), 7, np.int16))
    write_mhd(tmp_path / "labels", "p0", label)
    spec = {"modality": "ct", "ndim": 3, "images": "images/*.mhd", "labels": "labels/*.mhd", "classes": {1: "a"}}
    chunks = {"chunks_2d": [8, 8], "chunks_3d": [2, 8, 8]}
    ingest_dataset("ds", spec, "a.zarr", "a.tsv", chunks)
    before = DatasetStore("a.zarr").info("p0").attrs["sha256"]["image"]
    write_mhd(tmp_path / "images", "p0", np.full((2, 8, 8), 9, np.int16))  # same header, other data
    ingest_dataset("ds", spec, "b.zarr", "b.tsv", chunks)
    assert DatasetStore("b.zarr").info("p0").attrs["sha256"]["image"] != before
    assert DatasetStore("b.zarr").info("p0").attrs["source"]["image"] == "images/p0.mhd"
    # a header pointing out of its folder: the case is quarantined naming the header
    write_mhd(tmp_path / "images", "p0", np.full((2, 8, 8), 9, np.int16), "../labels/p0.raw")
    with pytest.raises(Exception, match="no case could be ingested"):
        ingest_dataset("ds", spec, "c.zarr", "c.tsv", chunks)
    (row,) = read_quarantine("c.tsv")
    assert "images/p0.mhd: path '../labels/p0.raw' leaves the dataset folder" in row.problem
