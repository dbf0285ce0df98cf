"""CAMUS echocardiography: ``database_nifti/patient0001/patient0001_{2CH,4CH}_{half_sequence,ED,ES}
[_gt].nii.gz`` + ``Info_{2CH,4CH}.cfg`` (notes: camus.md).

Entry as the notes propose: half sequences as 3D (frames along z, nibabel (X, Y, T) -> store
(T, Y, X)), case ``patient0001_2CH`` from the file, patient from the folder. Labels 1 LV cavity,
2 myocardium (ring), 3 left atrium; in patient0002_4CH frame 0 the atrium is out of view (the
paper's "all classes present" frame filter drops that frame; ingest keeps it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, affine_diag, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "camus"
FOLDER = "camus"
ENTRIES = ("camus",)
DEFECTS = {
    "gt_missing": "patient0003_4CH_half_sequence_gt.nii.gz is absent",
    "frames_mismatch": "patient0002_2CH_half_sequence_gt.nii.gz has one frame fewer than its image",
}
CLASSES = {1: "lv_endocardium", 2: "lv_myocardium", 3: "left_atrium"}
FRAMES, Y, X = 4, 24, 20
SPACING_XYT = (0.3, 0.15, 1.0)
PATIENTS = ("patient0001", "patient0002", "patient0003")


def _frame(t: int, n: int, view: str, atrium: bool) -> np.ndarray:
    """Apical view: LV cavity (1) with myocardium ring (2) at the top, atrium (3) below."""
    squeeze = 1.0 - 0.12 * np.sin(np.pi * t / (n - 1))        # contraction over the half cycle
    cx = 10 if view == "2CH" else 9
    cavity = ellipse((Y, X), (9, cx), (7 * squeeze, 3.5 * squeeze))
    wall = ellipse((Y, X), (9, cx), (7 * squeeze + 2, 3.5 * squeeze + 2))
    label = np.zeros((Y, X), np.uint8)
    label[wall] = 2
    label[cavity] = 1
    if atrium:
        label[ellipse((Y, X), (20, cx), (3, 3)) & (label == 0)] = 3
    return label


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("camus", 3, CLASSES, notes="half sequences as (T, Y, X); ED/ES files are not globbed")
    affine = affine_diag(SPACING_XYT)
    spacing = tuple(reversed(SPACING_XYT))
    for patient in PATIENTS:
        base = f"database_nifti/{patient}"
        for view in ("2CH", "4CH"):
            label = np.stack([_frame(k, FRAMES, view, not (patient == "patient0002" and view == "4CH" and k == 0))
                              for k in range(FRAMES)])
            image = grey_image(t.rng(patient, view), label, {1: 20, 2: 170, 3: 25}, 60, 18)
            stem = f"{base}/{patient}_{view}"
            t.nifti(f"{stem}_half_sequence.nii.gz", image.transpose(2, 1, 0), affine)
            t.nifti(f"{stem}_half_sequence_gt.nii.gz", label.transpose(2, 1, 0), affine)
            for phase, k in (("ED", 0), ("ES", FRAMES - 2)):
                t.nifti(f"{stem}_{phase}.nii.gz", image[k].T[:, :, None], affine)
                t.nifti(f"{stem}_{phase}_gt.nii.gz", label[k].T[:, :, None], affine)
            t.text(f"{base}/Info_{view}.cfg",
                   f"ED: 1\nES: {FRAMES - 1}\nNbFrame: {FRAMES}\nSex: F\nAge: 60\nImageQuality: Good\n"
                   f"LVedv: 90.0\nLVesv: 40.0\nLVef: 55.6\n")
            entry.cases.append(Case(f"{patient}_{view}", patient, label, image.shape, spacing, image=image,
                                    files=(f"{stem}_half_sequence.nii.gz", f"{stem}_half_sequence_gt.nii.gz")))
    if "gt_missing" in defects:
        rel = "database_nifti/patient0003/patient0003_4CH_half_sequence_gt.nii.gz"
        t.remove(rel)
        entry.quarantine("patient0003_4CH", "unpaired_image",
                         "database_nifti/patient0003/patient0003_4CH_half_sequence.nii.gz")
    if "frames_mismatch" in defects:
        rel = "database_nifti/patient0002/patient0002_2CH_half_sequence_gt.nii.gz"
        t.nifti(rel, entry.case("patient0002_2CH").label[:-1].transpose(2, 1, 0), affine)
        entry.quarantine("patient0002_2CH", "shape_mismatch", rel)
    return t.expected([entry], defects)
