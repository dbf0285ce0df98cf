"""SPIDER lumbar spine MRI: ``images/<patient>_<t1|t2|t2_SPACE>.mha`` and ``masks/`` with the same
names, as Zenodo's images.zip and masks.zip unzip (torch-em puts them under its own ``data/``)
(notes: spider.md).

Sagittal volumes: few slices along ITK x. Raw mask values: vertebrae 1..25 (1 = L5, at the
bottom), 100 spinal canal, 101..125 partially visible vertebrae, 201..225 discs. Expected labels
follow CONTRACT.md: ``axes: xzy`` (store = ITK array (z, y, x).transpose(2, 0, 1), the plane
medico-sam slices) and ``label_map {1-25: 1, 101-125: 1, 100: 2, 201-225: 3}``; the raw values in
store order are in ``attrs["raw_label"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, box, check_defects, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "spider"
FOLDER = "spider"
ENTRIES = ("spider",)
DEFECTS = {
    "unknown_value": "masks/2_t2.mha holds a voxel of value 7000",
    "mask_missing": "masks/1_t1.mha is absent",
}
# (series, ITK size x, spacing x)
SERIES = (("1_t1", 5, 3.5), ("1_t2", 5, 3.5), ("2_t2", 5, 3.5), ("2_t2_SPACE", 8, 2.0))
NZ, NY = 24, 32                      # ITK z (cranio-caudal), y (antero-posterior)
SPACING_YZ = (0.6, 0.6)


def _spine(nx: int, shift: int) -> np.ndarray:
    """Raw SPIDER values on the ITK array grid (z, y, x); z = 0 is caudal here."""
    raw = np.zeros((NZ, NY, nx), np.uint16)
    mid = slice(max(nx // 2 - 2, 0), nx // 2 + 2)
    for k, z0 in enumerate(range(1 + shift, NZ - 4, 6)):            # vertebral bodies 1, 2, 3 upwards
        raw[z0:z0 + 4, 6:18, :] = k + 1
        if z0 + 4 < NZ:
            raw[z0 + 4:z0 + 6, 7:17, mid] = 201 + k                 # disc above each body
    raw[NZ - 3:, 6:18, :] = 101                                     # partially visible vertebra at the top
    raw[:, 19:23, mid][raw[:, 19:23, mid] == 0] = 100               # spinal canal behind, along z
    return raw


def _classes(raw: np.ndarray) -> np.ndarray:
    label = np.zeros(raw.shape, np.uint8)
    label[((raw >= 1) & (raw <= 25)) | ((raw >= 101) & (raw <= 125))] = 1
    label[raw == 100] = 2
    label[(raw >= 201) & (raw <= 225)] = 3
    return label


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("spider", 3, {1: "vertebrae", 2: "spinal_canal", 3: "intervertebral_discs"}, axes="xzy",
                  notes="store = ITK array (z, y, x).transpose(2, 0, 1); raw values in attrs['raw_label']")
    for series, nx, sx in SERIES:
        patient = series.split("_")[0]
        raw = _spine(nx, shift=int(patient) - 1)
        tissue = np.where(raw == 0, 0, np.where(raw >= 201, 2, np.where(raw == 100, 3, 1)))
        tissue[box(raw.shape, (0, 0, 0), (NZ, 4, nx))] = 4
        image = grey_image(t.rng(series), tissue, {1: 900, 2: 1600, 3: 2200, 4: 400}, 150, 60, np.uint16, 0, 4095)
        spacing_xyz = (sx, SPACING_YZ[0], SPACING_YZ[1])
        origin = (-sx * nx / 2, -20.0, -10.0)
        t.itk(f"images/{series}.mha", image, spacing_xyz, origin)
        t.itk(f"masks/{series}.mha", raw, spacing_xyz, origin)
        raw_store = raw.transpose(2, 0, 1)
        entry.cases.append(Case(series, patient, _classes(raw_store), raw_store.shape,
                                (sx, SPACING_YZ[1], SPACING_YZ[0]), image=image.transpose(2, 0, 1),
                                files=(f"images/{series}.mha", f"masks/{series}.mha"),
                                attrs={"raw_label": raw_store}))
    if "unknown_value" in defects:
        rel = "masks/2_t2.mha"
        raw = entry.case("2_t2").attrs["raw_label"].transpose(1, 2, 0).copy()
        raw[0, 0, 0] = 7000
        t.itk(rel, raw, (3.5, *SPACING_YZ), (-3.5 * 5 / 2, -20.0, -10.0))
        entry.quarantine("2_t2", "unknown_value", rel)
    if "mask_missing" in defects:
        t.remove("masks/1_t1.mha")
        entry.quarantine("1_t1", "unpaired_image", "images/1_t1.mha")
    return t.expected([entry], defects)
