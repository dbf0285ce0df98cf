"""ISIC 2018 task 1: ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_nnnnnnn.jpg`` and
``ISIC2018_Task1_{...}_GroundTruth/ISIC_nnnnnnn_segmentation.png`` (0/255), plus
``ATTRIBUTION.txt`` / ``LICENSE.txt`` in every folder (notes: isic.md).

Case ``ISIC_nnnnnnn``; the publisher split (folder word) is recorded in ``Case.split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, rgb_image
from layouts.expected import Case, Entry, Expected

NAME = "isic"
FOLDER = "isic"
ENTRIES = ("isic",)
DEFECTS = {
    "mask_missing": "ISIC2018_Task1_Test_GroundTruth/ISIC_0012237_segmentation.png is absent",
    "mask_shape_mismatch": "ISIC_0000001_segmentation.png is transposed (40x30 for a 30x40 image)",
}
SHAPE = (30, 40)
CASES = {"Training": ("ISIC_0000000", "ISIC_0000001"), "Validation": ("ISIC_0012255",),
         "Test": ("ISIC_0012236", "ISIC_0012237")}
SPLIT = {"Training": "train", "Validation": "val", "Test": "test"}


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("isic", 2, {1: "lesion"}, notes="255 -> 1; split from the folder")
    for word, ids in CASES.items():
        inputs, truth = f"ISIC2018_Task1-2_{word}_Input", f"ISIC2018_Task1_{word}_GroundTruth"
        for folder in (inputs, truth):
            t.text(f"{folder}/ATTRIBUTION.txt", "ISIC Archive (miniature)\n")
            t.text(f"{folder}/LICENSE.txt", "CC-BY-NC (miniature)\n")
        for case in ids:
            r = t.rng(case)
            lesion = blob(r, SHAPE, (15 + r.integers(-2, 3), 20 + r.integers(-3, 4)), 7 + r.uniform(0, 3))
            label = lesion.astype(np.uint8)
            image = t.jpg(f"{inputs}/{case}.jpg", rgb_image(r, label, {1: (110, 70, 50)}, (215, 165, 140)))
            t.png(f"{truth}/{case}_segmentation.png", label * np.uint8(255))
            entry.cases.append(Case(case, case, label, image.shape, split=SPLIT[word], image=image,
                                    files=(f"{inputs}/{case}.jpg", f"{truth}/{case}_segmentation.png")))
    if "mask_missing" in defects:
        t.remove("ISIC2018_Task1_Test_GroundTruth/ISIC_0012237_segmentation.png")
        entry.quarantine("ISIC_0012237", "unpaired_image", "ISIC2018_Task1-2_Test_Input/ISIC_0012237.jpg")
    if "mask_shape_mismatch" in defects:
        rel = "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png"
        t.png(rel, np.ascontiguousarray(entry.case("ISIC_0000001").label.T) * np.uint8(255))
        entry.quarantine("ISIC_0000001", "shape_mismatch", rel)
    return t.expected([entry], defects)
