"""KiTS23 kidney CT: ``kits23/dataset/case_NNNNN/{imaging,segmentation}.nii.gz`` and
``instances/<class>_instance-<k>_annotation-<r>.nii.gz`` (notes: kits.md).

Every case uses the same file names (ids from the folder). Volumes store the axial slice index
as voxel axis i (affine maps i to S-I), hence CONTRACT.md ``axes: xyz``: store = voxel (i, j, k). The expected
label is the paper's: the union of the ``tumor_instance-*_annotation-1`` files (equal to
``segmentation == 2`` here; rater 2 draws wider), two separated tumours in case_00000; the raw
0..3 segmentation (store order) is in ``attrs["segmentation"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipsoid, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "kits"
FOLDER = "kits"
ENTRIES = ("kits",)
DEFECTS = {
    "labels_missing": "case_00001/ has imaging.nii.gz but neither segmentation.nii.gz nor instances/",
    "imaging_missing": "case_00002/ has its labels but no imaging.nii.gz (download incomplete)",
}
BASE = "kits23/dataset"
SHAPE = (12, 20, 20)                  # voxel (i, j, k); i = axial slices
SPACING_IJK = (2.5, 0.8, 0.8)
AFFINE = np.array([[0.0, 0.0, -0.8, 0.0], [0.0, -0.8, 0.0, 0.0], [-2.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _anatomy(r: np.random.Generator, n_tumours: int) -> dict[str, list[np.ndarray]]:
    kidneys = [ellipsoid(SHAPE, (6, 11, 5), (4, 4, 2.5), 0.3), ellipsoid(SHAPE, (6, 11, 15), (4, 4, 2.5), -0.3)]
    tumours = [ellipsoid(SHAPE, (4, 10, 5 + r.uniform(-0.3, 0.3)), (1.2, 1.5, 1.5))]
    if n_tumours > 1:
        tumours.append(ellipsoid(SHAPE, (8, 12, 5), (1.2, 1.5, 1.5)))
    cysts = [ellipsoid(SHAPE, (6, 9, 15), (1.2, 1.2, 1.2))]
    return {"kidney": kidneys, "tumor": tumours, "cyst": cysts}


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("kits", 3, {1: "tumor"}, axes="xyz",
                  notes="rater-1 tumour union; store = voxel (i, j, k); raw in attrs['segmentation']")
    for case, n_tumours in (("case_00000", 2), ("case_00001", 1), ("case_00002", 1)):
        r = t.rng(case)
        parts = _anatomy(r, n_tumours)
        seg = np.zeros(SHAPE, np.uint8)
        for value, name in ((1, "kidney"), (2, "tumor"), (3, "cyst")):
            for mask in parts[name]:
                seg[mask] = value
        body = ellipsoid(SHAPE, (6, 10, 10), (20, 9, 9.5))
        image = grey_image(r, body + 2 * (seg == 1) + 3 * (seg == 2) + 4 * (seg == 3),
                           {1: 40, 3: 180, 4: 90, 5: 10}, -1000, 12, np.int16, -1024, 3071)
        t.nifti(f"{BASE}/{case}/imaging.nii.gz", image, AFFINE)
        t.nifti(f"{BASE}/{case}/segmentation.nii.gz", seg, AFFINE)
        for name, masks in parts.items():
            for k, mask in enumerate(masks, start=1):
                t.nifti(f"{BASE}/{case}/instances/{name}_instance-{k}_annotation-1.nii.gz", mask.astype(np.uint8),
                        AFFINE)
        grown = parts["tumor"][0] | np.roll(parts["tumor"][0], 1, axis=2)        # rater 2 draws wider
        t.nifti(f"{BASE}/{case}/instances/tumor_instance-1_annotation-2.nii.gz", grown.astype(np.uint8), AFFINE)
        tumours = tuple(f"{BASE}/{case}/instances/tumor_instance-{k}_annotation-1.nii.gz"
                        for k in range(1, n_tumours + 1))
        entry.cases.append(Case(case, case, (seg == 2).astype(np.uint8), SHAPE, SPACING_IJK, image=image,
                                files=(f"{BASE}/{case}/imaging.nii.gz", *tumours),
                                attrs={"segmentation": seg}))
    if "labels_missing" in defects:
        for rel in sorted(t.path(f"{BASE}/case_00001").rglob("*.nii.gz")):
            if rel.name != "imaging.nii.gz":
                rel.unlink()
        t.path(f"{BASE}/case_00001/instances").rmdir()
        entry.quarantine("case_00001", "unpaired_image", f"{BASE}/case_00001/imaging.nii.gz")
    if "imaging_missing" in defects:
        t.remove(f"{BASE}/case_00002/imaging.nii.gz")
        entry.quarantine("case_00002", "unpaired_label",
                         f"{BASE}/case_00002/instances/tumor_instance-1_annotation-1.nii.gz")
    return t.expected([entry], defects)
