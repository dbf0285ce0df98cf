"""Montgomery County chest X-rays: ``MontgomerySet/CXR_png/MCUCXR_0001_0.png`` with two masks of the
same name in ``ManualMask/leftMask/`` and ``ManualMask/rightMask/`` (notes: montgomery.md).

Both lungs become class 1 (the paper's ``lungs``). The patient's left lung is on the image's
right. Mask encodings vary on purpose: 0/255, 1-bit PNG, 0/1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "montgomery"
FOLDER = "montgomery"
ENTRIES = ("montgomery",)
DEFECTS = {
    "right_mask_missing": "ManualMask/rightMask/MCUCXR_0003_0.png is absent (partner file missing)",
    "mask_shape_mismatch": "ManualMask/leftMask/MCUCXR_0002_1.png has 2 rows fewer than the X-ray",
}
SHAPE = (48, 40)
CASES = (("MCUCXR_0001_0", "255"), ("MCUCXR_0002_1", "bit"), ("MCUCXR_0003_0", "one"))


def _write_mask(t: Tree, rel: str, mask: np.ndarray, encoding: str) -> None:
    if encoding == "bit":
        t.png(rel, mask, one_bit=True)
    else:
        t.png(rel, mask.astype(np.uint8) * np.uint8(255 if encoding == "255" else 1))


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("montgomery", 2, {1: "lungs"}, notes="left and right masks both -> 1")
    for case, encoding in CASES:
        r = t.rng(case)
        right = blob(r, SHAPE, (22, 11), 9)                 # patient's right lung: image left
        left = blob(r, SHAPE, (23, 29), 8.5)                # patient's left lung: image right
        label = (left | right).astype(np.uint8)
        image = grey_image(r, label, {1: 40}, 170, 20)
        t.png(f"MontgomerySet/CXR_png/{case}.png", image)
        _write_mask(t, f"MontgomerySet/ManualMask/leftMask/{case}.png", left, encoding)
        _write_mask(t, f"MontgomerySet/ManualMask/rightMask/{case}.png", right, encoding)
        t.text(f"MontgomerySet/ClinicalReadings/{case}.txt",
               f"Patient's Sex: {'F' if r.random() < 0.5 else 'M'}\nPatient's Age: 0{r.integers(20, 80)}Y\n"
               f"{'normal' if case.endswith('_0') else 'TB'}\n")
        entry.cases.append(Case(case, case, label, image.shape, image=image, files=(
            f"MontgomerySet/CXR_png/{case}.png", f"MontgomerySet/ManualMask/leftMask/{case}.png",
            f"MontgomerySet/ManualMask/rightMask/{case}.png")))
    if "right_mask_missing" in defects:
        rel = "MontgomerySet/ManualMask/rightMask/MCUCXR_0003_0.png"
        t.remove(rel)
        entry.quarantine("MCUCXR_0003_0", "missing_file", rel)
    if "mask_shape_mismatch" in defects:
        rel = "MontgomerySet/ManualMask/leftMask/MCUCXR_0002_1.png"
        t.png(rel, np.ones((SHAPE[0] - 2, SHAPE[1]), bool), one_bit=True)
        entry.quarantine("MCUCXR_0002_1", "shape_mismatch", rel)
    return t.expected([entry], defects)
