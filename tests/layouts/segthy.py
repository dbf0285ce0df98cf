"""SegThy 3D thyroid ultrasound (US part): ``US_volunteer_dataset/ground_truth_data/US/
<vvv>_P<k>_<n>_<side>_US.nii`` and ``US_thyroid_label/<vvv>_P<k>_<n>_<side>.nii`` (uncompressed)
(notes: segthy.md).

Label values are ambiguous in the notes (thyroid only vs. 1 thyroid, 2/4 carotid, 3/5 jugular);
assumed the five-value legend: left scans hold 1, 2, 3 and right scans 1, 4, 5. In 001_P1_1_left
the carotid is cut in two pieces (two 26-connected objects of value 2). Patient = volunteer vvv.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, affine_diag, check_defects, ellipsoid, grey_image, tube
from layouts.expected import Case, Entry, Expected

NAME = "segthy"
FOLDER = "segthy"
ENTRIES = ("segthy",)
DEFECTS = {
    "label_missing": "US_thyroid_label/005_P1_1_left.nii is absent",
    "shape_mismatch": "US_thyroid_label/001_P2_1_right.nii has another shape",
}
BASE = "US_volunteer_dataset/ground_truth_data"
SHAPE = (16, 20, 20)                        # store (z, y, x); NIfTI (20, 20, 16)
SPACING_IJK = (0.12, 0.12, 0.12)
CLASSES = {1: "thyroid", 2: "carotid_left", 3: "jugular_left", 4: "carotid_right", 5: "jugular_right"}
SCANS = ("001_P1_1_left", "001_P2_1_right", "005_P1_1_left")


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("segthy", 3, CLASSES, notes="values 1..5 assumed (verify on real files)")
    affine = affine_diag(SPACING_IJK)
    for scan in SCANS:
        r = t.rng(scan)
        left = scan.endswith("left")
        carotid_v, jugular_v = (2, 3) if left else (4, 5)
        label = np.zeros(SHAPE, np.uint8)
        label[ellipsoid(SHAPE, (8, 8 + r.uniform(-1, 1), 9), (6, 4, 3.5))] = 1
        carotid = tube(SHAPE, (9, 15), (10, 15), 2.0)
        if scan == "001_P1_1_left":
            carotid[7:9] = False                                         # shadowed: two pieces
        label[carotid & (label == 0)] = carotid_v
        label[tube(SHAPE, (4, 16), (5, 17), 1.6) & (label == 0)] = jugular_v
        image = grey_image(r, label, {1: 140, carotid_v: 15, jugular_v: 25}, 80, 25)
        t.nifti(f"{BASE}/US/{scan}_US.nii", image.transpose(2, 1, 0), affine)
        t.nifti(f"{BASE}/US_thyroid_label/{scan}.nii", label.transpose(2, 1, 0), affine)
        entry.cases.append(Case(scan, scan[:3], label, SHAPE, tuple(reversed(SPACING_IJK)), image=image,
                                files=(f"{BASE}/US/{scan}_US.nii", f"{BASE}/US_thyroid_label/{scan}.nii")))
    if "label_missing" in defects:
        t.remove(f"{BASE}/US_thyroid_label/005_P1_1_left.nii")
        entry.quarantine("005_P1_1_left", "unpaired_image", f"{BASE}/US/005_P1_1_left_US.nii")
    if "shape_mismatch" in defects:
        rel = f"{BASE}/US_thyroid_label/001_P2_1_right.nii"
        t.nifti(rel, np.zeros((20, 20, 15), np.uint8), affine)
        entry.quarantine("001_P2_1_right", "shape_mismatch", rel)
    return t.expected([entry], defects)
