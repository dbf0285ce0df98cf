"""ToothFairy v1 CBCT: ``ToothFairy_Dataset/Dataset/P<n>/data.npy`` (Z, Y, X) with a dense
``gt_alpha.npy`` for some patients only, ``gt_sparse.npy`` for all, and ``splits.json``
(notes: toothfairy.md).

Every patient folder uses the same file names (ids from the folder). P3 has only sparse labels:
an image without label, quarantined (CONTRACT.md: nothing is dropped silently). The inferior
alveolar canals are two tubes (left, right; both value 1) running along Y. NumPy files carry no
spacing (stored as 1.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected, Problem

NAME = "toothfairy"
FOLDER = "toothfairy"
ENTRIES = ("toothfairy",)
DEFECTS = {
    "data_missing": "Dataset/P2/ has gt_alpha.npy but no data.npy",
    "shape_mismatch": "Dataset/P1/gt_alpha.npy has one slice fewer than data.npy",
}
BASE = "ToothFairy_Dataset/Dataset"
SHAPE = (12, 24, 20)


def _canals(r: np.random.Generator) -> np.ndarray:
    """Two canals running along Y (antero-posterior) at different X, descending slightly in Z."""
    nz, ny, nx = SHAPE
    mask = np.zeros(SHAPE, bool)
    for x0 in (4.5 + r.uniform(-0.5, 0.5), 15.0 + r.uniform(-0.5, 0.5)):
        for y in range(3, ny - 3):
            z = 5 + 2.0 * y / ny
            mask[:, y, :] |= ellipse((nz, nx), (z, x0), (1.2, 1.2))
    return mask


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("toothfairy", 3, {1: "inferior_alveolar_canal"}, notes="npy (Z, Y, X); spacing from the config")
    for patient, dense in (("P1", True), ("P2", True), ("P3", False)):
        r = t.rng(patient)
        canal = _canals(r)
        bone = np.zeros(SHAPE, bool)
        bone[2:10] = True
        image = grey_image(r, bone.astype(np.uint8) + canal, {1: 1400, 2: 500}, 200, 80, np.int16, -1000, 4000)
        t.npy(f"{BASE}/{patient}/data.npy", image)
        sparse = np.zeros(SHAPE, np.uint8)
        sparse[6, ::4][canal[6, ::4]] = 1
        t.npy(f"{BASE}/{patient}/gt_sparse.npy", sparse)
        if dense:
            t.npy(f"{BASE}/{patient}/gt_alpha.npy", canal.astype(np.uint8))
            entry.cases.append(Case(patient, patient, canal.astype(np.uint8), SHAPE, None, image=image,
                                    files=(f"{BASE}/{patient}/data.npy", f"{BASE}/{patient}/gt_alpha.npy")))
        else:
            entry.quarantined.append(Problem(patient, "unpaired_image", f"{BASE}/{patient}/data.npy"))
    t.json("ToothFairy_Dataset/splits.json",
           {"training": ["P1"], "validation": ["P2"], "test": [], "synthetic": ["P3"]})
    t.text("ToothFairy_Dataset/README.md", "ToothFairy dataset (miniature)\n")
    if "data_missing" in defects:
        t.remove(f"{BASE}/P2/data.npy")
        entry.quarantine("P2", "unpaired_label", f"{BASE}/P2/gt_alpha.npy")
    if "shape_mismatch" in defects:
        rel = f"{BASE}/P1/gt_alpha.npy"
        t.npy(rel, entry.case("P1").label[:-1])
        entry.quarantine("P1", "shape_mismatch", rel)
    return t.expected([entry], defects)
