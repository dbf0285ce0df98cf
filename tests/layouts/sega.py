"""SEG.A. 2023 aortic vessel trees (AVT): ``{KiTS,Rider,Dongyang}/<case>/<case>.nrrd`` CT and
``<case>.seg.nrrd`` Slicer segmentation (notes: sega.md).

A glob ``*/*/*.nrrd`` would also match the ``.seg.nrrd`` labels (the contract's image glob is
``*/*/[KRD]*[0-9].nrrd``). The
aorta descends along z and splits into the two iliac arteries in the lowest slices (one class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, grey_image, tube
from layouts.expected import Case, Entry, Expected

NAME = "sega"
FOLDER = "sega"
ENTRIES = ("sega",)
DEFECTS = {
    "seg_shape_mismatch": "Dongyang/D1/D1.seg.nrrd has one slice fewer than D1.nrrd",
    "seg_missing": "Rider/R1/R1.seg.nrrd is absent",
}
SHAPE = (8, 16, 16)
SPACING_XYZ = (0.8, 0.8, 2.5)
CASES = (("KiTS", "K1"), ("KiTS", "K2"), ("Rider", "R1"), ("Dongyang", "D1"))
SLICER_KEYS = {
    "Segment0_ID": "Segment_1", "Segment0_Name": "aorta", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
    "Segment0_Color": "0.847 0.396 0.310", "Segmentation_MasterRepresentation": "Binary labelmap",
    "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
}


def _vessels(r: np.random.Generator) -> np.ndarray:
    cy, cx = 7 + r.integers(-1, 2), 8 + r.integers(-1, 2)
    aorta = tube(SHAPE, (cy, cx), (cy + 1, cx), 2.2, z_range=(2, SHAPE[0]))
    left = tube(SHAPE, (cy + 1, cx - 1), (cy + 2, cx - 4), 1.3, z_range=(0, 3))
    right = tube(SHAPE, (cy + 1, cx + 1), (cy + 2, cx + 4), 1.3, z_range=(0, 3))
    return (aorta | left | right).astype(np.uint8)


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("sega", 3, {1: "aorta"}, notes="cohort = top folder; patient = case")
    spacing = tuple(reversed(SPACING_XYZ))
    for cohort, case in CASES:
        r = t.rng(case)
        label = _vessels(r)
        body = np.broadcast_to(ellipse(SHAPE[1:], (8, 8), (7, 7.5)), SHAPE)
        tissue = np.where(body, 1, 0) + 2 * label
        image = grey_image(r, tissue, {1: 40, 3: 320}, -1000, 25, dtype=np.int16, lo=-1024, hi=3071)
        origin = (-6.0, -6.0, -100.0 + 10 * r.integers(0, 5))
        t.itk(f"{cohort}/{case}/{case}.nrrd", image, SPACING_XYZ, origin, compress=True)
        t.itk(f"{cohort}/{case}/{case}.seg.nrrd", label, SPACING_XYZ, origin, meta=SLICER_KEYS, compress=True)
        entry.cases.append(Case(case, case, label, image.shape, spacing, image=image,
                                files=(f"{cohort}/{case}/{case}.nrrd", f"{cohort}/{case}/{case}.seg.nrrd"),
                                attrs={"cohort": cohort}))
    if "seg_shape_mismatch" in defects:
        rel = "Dongyang/D1/D1.seg.nrrd"
        t.itk(rel, entry.case("D1").label[:-1], SPACING_XYZ, meta=SLICER_KEYS, compress=True)
        entry.quarantine("D1", "shape_mismatch", rel)
    if "seg_missing" in defects:
        t.remove("Rider/R1/R1.seg.nrrd")
        entry.quarantine("R1", "unpaired_image", "Rider/R1/R1.nrrd")
    return t.expected([entry], defects)
