"""Micro-ultrasound prostate (MicroSegNet): ``Micro_Ultrasound_Prostate_Segmentation_Dataset/
{train,test}/micro_ultrasound_scans/microUS_<split>_<nn>.nii.gz`` with
``expert_annotations/expert_annotation_<split>_<nn>.nii.gz`` and other annotators' folders
(notes: microusp.md).

Case id ``<split>_<nn>`` (the number repeats across train and test); the publisher split is
recorded in ``Case.split``; non-expert / clinician annotations must not be picked up. One expert
mask stores the prostate as 255 (``label_map: {other: 1}``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, affine_diag, check_defects, ellipsoid, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "microusp"
FOLDER = "microusp"
ENTRIES = ("microusp",)
DEFECTS = {
    "annotation_missing": "train/expert_annotations/expert_annotation_train_02.nii.gz is absent",
    "shape_mismatch": "test/expert_annotations/expert_annotation_test_01.nii.gz has another shape",
}
TOP = "Micro_Ultrasound_Prostate_Segmentation_Dataset"
SHAPE = (8, 24, 16)                       # store (z, y, x); NIfTI (x=16, y=24, z=8)
SPACING_IJK = (0.033, 0.033, 0.5)
CASES = (("train", "01", 1), ("train", "02", 255), ("test", "01", 1))


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("microusp", 3, {1: "prostate"}, notes="other -> 1; publisher split in Case.split")
    affine = affine_diag(SPACING_IJK)
    for split, nn, value in CASES:
        r = t.rng(split, nn)
        prostate = ellipsoid(SHAPE, (4 + r.uniform(-0.5, 0.5), 12, 8), (3, 8, 5.5), r.uniform(0, 0.4))
        image = grey_image(r, prostate.astype(np.uint8), {1: 110}, 60, 20)
        scan = f"{TOP}/{split}/micro_ultrasound_scans/microUS_{split}_{nn}.nii.gz"
        expert = f"{TOP}/{split}/expert_annotations/expert_annotation_{split}_{nn}.nii.gz"
        t.nifti(scan, image.transpose(2, 1, 0), affine)
        t.nifti(expert, (prostate * value).astype(np.uint8).transpose(2, 1, 0), affine)
        other = ("non_expert_annotations", "nonexpert_annotation") if split == "train" else \
            ("clinician_annotations", "clinician_annotation")
        rough = ellipsoid(SHAPE, (4, 12, 8), (3, 9, 6)).astype(np.uint8)
        t.nifti(f"{TOP}/{split}/{other[0]}/{other[1]}_{split}_{nn}.nii.gz", rough.transpose(2, 1, 0), affine)
        entry.cases.append(Case(f"{split}_{nn}", f"{split}_{nn}", prostate.astype(np.uint8), SHAPE,
                                tuple(reversed(SPACING_IJK)), split=split, image=image, files=(scan, expert)))
    if "annotation_missing" in defects:
        t.remove(f"{TOP}/train/expert_annotations/expert_annotation_train_02.nii.gz")
        entry.quarantine("train_02", "unpaired_image", f"{TOP}/train/micro_ultrasound_scans/microUS_train_02.nii.gz")
    if "shape_mismatch" in defects:
        rel = f"{TOP}/test/expert_annotations/expert_annotation_test_01.nii.gz"
        t.nifti(rel, np.zeros((16, 24, 7), np.uint8), affine)
        entry.quarantine("test_01", "shape_mismatch", rel)
    return t.expected([entry], defects)
