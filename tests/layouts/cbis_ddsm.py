"""CBIS-DDSM (Kaggle PNG release): ``DATA/{Mass,Calc}/{Train,Test}/{BENIGN,MALIGNANT}/
<view>_FULL_PRE.png`` and one ``<view>_MASK_<k>_PRE.png`` per abnormality (notes: cbis_ddsm.md).

Mask names (``_MASK_<k>_``) are inferred, not attested. The MLO view of P_00001 has two masses
(two mask files, merged by union -> 1); a Calc view sits outside the Mass glob. Case id = view
(``Mass-Test_P_00001_LEFT_CC``), patient ``P_00001``, publisher split in ``Case.split`` (Train -> train).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "cbis_ddsm"
FOLDER = "cbis_ddsm"
ENTRIES = ("cbis_ddsm",)
DEFECTS = {
    "mask_size_mismatch": "the mask of Mass-Training_P_00002_RIGHT_CC is one pixel smaller than the image",
    "masks_missing": "Mass-Training_P_00004_LEFT_MLO has its FULL image but no MASK file",
}
SHAPE = (40, 30)
# (task, split folder, pathology, view name, number of masses, image dtype)
VIEWS = [
    ("Mass", "Test", "BENIGN", "Mass-Test_P_00001_LEFT_CC", 1, np.uint8),
    ("Mass", "Test", "MALIGNANT", "Mass-Test_P_00001_LEFT_MLO", 2, np.uint8),
    ("Mass", "Train", "BENIGN", "Mass-Training_P_00002_RIGHT_CC", 1, np.uint16),
    ("Mass", "Train", "MALIGNANT", "Mass-Training_P_00004_LEFT_MLO", 1, np.uint8),
    ("Calc", "Test", "BENIGN", "Calc-Test_P_00003_LEFT_CC", 1, np.uint8),
]


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("cbis_ddsm", 2, {1: "mass"}, notes="Mass task only; masks of a view merged by union")
    for task, split, pathology, view, n_masses, dtype in VIEWS:
        r = t.rng(view)
        folder = f"DATA/{task}/{split}/{pathology}"
        side = 0 if "RIGHT" in view else SHAPE[1]
        breast = ellipse(SHAPE, (20, side), (19, 22))
        masses = [blob(r, SHAPE, (10 + 18 * k + r.integers(-2, 3), abs(side - 9) + r.integers(-2, 3)), 3.5)
                  for k in range(n_masses)]
        label = np.zeros(SHAPE, np.uint8)
        for mass in masses:
            label[mass] = 1
        hi = 65535 if dtype == np.uint16 else 255
        scale = hi / 255
        image = grey_image(r, breast.astype(np.uint8) + 2 * label, {1: 120 * scale, 3: 200 * scale}, 5 * scale,
                           12 * scale, dtype, 0, hi)
        t.png(f"{folder}/{view}_FULL_PRE.png", image)
        masks = []
        for k, mass in enumerate(masses, start=1):
            masks.append(f"{folder}/{view}_MASK_{k}_PRE.png")
            t.png(masks[-1], mass.astype(np.uint8) * np.uint8(255))
        if task == "Mass":
            entry.cases.append(Case(view, view.split("_", 1)[1].rsplit("_", 2)[0], label, image.shape,
                                    split="test" if split == "Test" else "train", image=image,
                                    files=(f"{folder}/{view}_FULL_PRE.png", *masks)))
    if "mask_size_mismatch" in defects:
        rel = "DATA/Mass/Train/BENIGN/Mass-Training_P_00002_RIGHT_CC_MASK_1_PRE.png"
        t.png(rel, np.zeros((SHAPE[0] - 1, SHAPE[1] - 1), np.uint8) + np.uint8(255))
        entry.quarantine("Mass-Training_P_00002_RIGHT_CC", "shape_mismatch", rel)
    if "masks_missing" in defects:
        t.remove("DATA/Mass/Train/MALIGNANT/Mass-Training_P_00004_LEFT_MLO_MASK_1_PRE.png")
        entry.quarantine("Mass-Training_P_00004_LEFT_MLO", "unpaired_image",
                         "DATA/Mass/Train/MALIGNANT/Mass-Training_P_00004_LEFT_MLO_FULL_PRE.png")
    return t.expected([entry], defects)
