"""neurite-oasis v1.0 (OASIS-1): ``OASIS_OAS1_NNNN_MR1/{orig,norm,seg4,seg35,aligned_*,
slice_*}.nii.gz`` plus ``subjects.txt`` and label tables (notes: oasis.md).

The paper used ``orig`` + ``seg4`` (every folder has the same file names: ids from the folder).
seg4: 1 cortex, 2 subcortical grey matter, 3 white matter, 4 CSF as nested shells of a "brain";
seg35 holds other values (must not be picked up). Images float32 in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, affine_diag, check_defects, ellipsoid, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "oasis"
FOLDER = "oasis"
ENTRIES = ("oasis",)
DEFECTS = {
    "seg4_missing": "OASIS_OAS1_0003_MR1/ has orig.nii.gz but no seg4.nii.gz",
    "seg4_noninteger": "OASIS_OAS1_0002_MR1/seg4.nii.gz is float with a value 2.5",
}
SHAPE = (16, 16, 16)
SPACING = (1.0, 1.0, 1.0)
SUBJECTS = ("OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1", "OASIS_OAS1_0003_MR1")
SEG4 = {1: "Cortex", 2: "Subcortical-Gray-Matter", 3: "White-Matter", 4: "CSF"}


def _brain(r: np.random.Generator) -> np.ndarray:
    c = (8, 8 + r.uniform(-0.5, 0.5), 8)
    seg = np.zeros(SHAPE, np.uint8)
    seg[ellipsoid(SHAPE, c, (7, 7, 6))] = 4
    seg[ellipsoid(SHAPE, c, (6, 6, 5))] = 1
    seg[ellipsoid(SHAPE, c, (4.5, 4.5, 3.5))] = 3
    seg[ellipsoid(SHAPE, (8, 9, 6), (1.5, 1.5, 1.5))] = 2
    seg[ellipsoid(SHAPE, (8, 9, 10), (1.5, 1.5, 1.5))] = 2
    return seg


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("oasis", 3, {1: "cortex", 2: "subcortical_gray_matter", 3: "white_matter", 4: "csf"},
                  notes="orig.nii.gz + seg4.nii.gz")
    affine = affine_diag(SPACING, signs=(-1, 1, 1))
    t.text("subjects.txt", "".join(f"{s}\n" for s in SUBJECTS))
    t.text("seg4_labels.txt", "".join(f"{k} {v}\n" for k, v in SEG4.items()))
    t.text("seg35_labels.txt", "".join(f"{k} Structure-{k}\n" for k in range(1, 36)))
    for subject in SUBJECTS:
        r = t.rng(subject)
        seg = _brain(r)
        image = grey_image(r, seg, {1: 0.55, 2: 0.6, 3: 0.8, 4: 0.2}, 0.05, 0.04, np.float32, 0.0, 1.0)
        base = subject
        t.nifti(f"{base}/orig.nii.gz", image.transpose(2, 1, 0), affine)
        t.nifti(f"{base}/seg4.nii.gz", seg.transpose(2, 1, 0), affine)
        seg35 = np.where(seg == 1, 3, np.where(seg == 3, 2, np.where(seg == 2, 10, np.where(seg == 4, 24, 0))))
        t.nifti(f"{base}/seg35.nii.gz", seg35.astype(np.uint8).transpose(2, 1, 0), affine)
        t.nifti(f"{base}/norm.nii.gz", (image * (seg > 0)).transpose(2, 1, 0), affine)
        if subject.endswith("0001_MR1"):
            small = (slice(1, 15), slice(1, 15), slice(2, 14))
            t.nifti(f"{base}/aligned_norm.nii.gz", image[small].transpose(2, 1, 0), affine)
            t.nifti(f"{base}/aligned_seg4.nii.gz", seg[small].transpose(2, 1, 0), affine)
            t.nifti(f"{base}/slice_seg4.nii.gz", seg[8].T[:, :, None], affine)
        entry.cases.append(Case(subject, subject.rsplit("_", 1)[0], seg, SHAPE, SPACING, image=image,
                                files=(f"{base}/orig.nii.gz", f"{base}/seg4.nii.gz")))
    if "seg4_missing" in defects:
        t.remove("OASIS_OAS1_0003_MR1/seg4.nii.gz")
        entry.quarantine("OASIS_OAS1_0003_MR1", "unpaired_image", "OASIS_OAS1_0003_MR1/orig.nii.gz")
    if "seg4_noninteger" in defects:
        rel = "OASIS_OAS1_0002_MR1/seg4.nii.gz"
        seg = entry.case("OASIS_OAS1_0002_MR1").label.astype(np.float32)
        seg[8, 8, 8] = 2.5
        t.nifti(rel, seg.transpose(2, 1, 0), affine)
        entry.quarantine("OASIS_OAS1_0002_MR1", "unknown_value", rel)
    return t.expected([entry], defects)
