"""SIIM-ACR pneumothorax (Kaggle PNG release): ``siim-acr-pneumothorax/png_images/<i>_<split>_<flag>_.png``
and ``png_masks/`` with the same names, plus the two stage-1 CSVs (notes: siim_acr.md).

Entry = the publisher's positive test files ``*_test_1_.png`` (the paper's subset); negatives
(``_0_``, empty masks) lie outside that glob; ``2_test_1_`` has an all-255 mask
(torch-em drops it, medpipe keeps it). Case id ``<i>_<split>``; no patient ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "siim_acr"
FOLDER = "siim_acr"
ENTRIES = ("siim_acr",)
DEFECTS = {
    "mask_missing": "png_masks/0_test_1_.png is absent",
    "mask_shape_mismatch": "png_masks/3_test_1_.png is 4 rows shorter than its image",
}
TOP = "siim-acr-pneumothorax"
SHAPE = (32, 32)
FILES = (("0_train_0_", False), ("1_train_1_", True), ("0_test_1_", True), ("1_test_0_", False),
         ("2_test_1_", "all"), ("3_test_1_", True))


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("siim_acr", 2, {1: "pneumothorax"}, notes="positive test files; 255 -> 1")
    rows = {"train": ["new_filename,ImageId,has_pneumo"], "test": ["new_filename,ImageId,has_pneumo"]}
    for stem, positive in FILES:
        r = t.rng(stem)
        lungs = ellipse(SHAPE, (16, 8), (11, 6)) | ellipse(SHAPE, (16, 24), (11, 6))
        if positive == "all":
            label = np.ones(SHAPE, np.uint8)
        elif positive:
            label = (blob(r, SHAPE, (9, 5 if r.random() < 0.5 else 27), 4) & lungs).astype(np.uint8)
        else:
            label = np.zeros(SHAPE, np.uint8)
        image = grey_image(r, lungs.astype(np.uint8) + 2 * label, {1: 50, 3: 20}, 160, 15)
        t.png(f"{TOP}/png_images/{stem}.png", image)
        t.png(f"{TOP}/png_masks/{stem}.png", label * np.uint8(255))
        index, split, flag = stem.rstrip("_").split("_")
        uid = t.uid(stem)
        rows[split].append(f"{stem}.png,{uid},{flag}")
        if split == "test" and flag == "1":
            entry.cases.append(Case(f"{index}_{split}", f"{index}_{split}", label, image.shape, image=image,
                                    files=(f"{TOP}/png_images/{stem}.png", f"{TOP}/png_masks/{stem}.png")))
    for split, lines in rows.items():
        t.text(f"{TOP}/stage_1_{split}_images.csv", "\n".join(lines) + "\n")
    if "mask_missing" in defects:
        t.remove(f"{TOP}/png_masks/0_test_1_.png")
        entry.quarantine("0_test", "unpaired_image", f"{TOP}/png_images/0_test_1_.png")
    if "mask_shape_mismatch" in defects:
        rel = f"{TOP}/png_masks/3_test_1_.png"
        t.png(rel, entry.case("3_test").label[:-4] * np.uint8(255))
        entry.quarantine("3_test", "shape_mismatch", rel)
    return t.expected([entry], defects)
