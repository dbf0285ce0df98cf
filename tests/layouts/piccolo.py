"""PICCOLO colonoscopy polyps: ``piccolo dataset-release0.1/{train,validation,test}/{polyps,masks}/``
(notes: piccolo.md).

File names are NOT verified (torch-em globs ``*`` and pairs by position); assumed here: image and
mask share the stem ``<lesion>_<light>_frame<nnnn>.png``, masks 0/255 single channel. Case id =
``{split}_{stem}``; the publisher split (``validation`` -> val) is recorded in ``Case.split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, rgb_image
from layouts.expected import Case, Entry, Expected

NAME = "piccolo"
FOLDER = "piccolo"
ENTRIES = ("piccolo",)
DEFECTS = {
    "mask_missing": "test/masks/ lacks the mask of one test image",
    "empty_mask": "one validation mask is all zero",
}
TOP = "piccolo dataset-release0.1"
SHAPE = (24, 32)
SPLITS = {"train": "train", "validation": "val", "test": "test"}
STEMS = {"train": ("001_VP1_frame0001", "001_VP1_frame0002"), "validation": ("014_VP3_frame0040", "014_NBI_frame0041"),
         "test": ("032_VP7_frame0100", "033_NBI_frame0007")}


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("piccolo", 2, {1: "polyp"}, notes="file names assumed; masks 255 -> 1; split from folder")
    for folder, split in SPLITS.items():
        for stem in STEMS[folder]:
            r = t.rng(folder, stem)
            polyp = blob(r, SHAPE, (12 + r.integers(-3, 4), 16 + r.integers(-5, 6)), 5 + r.uniform(0, 2))
            label = polyp.astype(np.uint8)
            nbi = "NBI" in stem
            image = rgb_image(r, label, {1: (120, 140, 90) if nbi else (200, 110, 90)},
                              (60, 90, 70) if nbi else (170, 70, 60))
            t.png(f"{TOP}/{folder}/polyps/{stem}.png", image)
            t.png(f"{TOP}/{folder}/masks/{stem}.png", label * np.uint8(255))
            entry.cases.append(Case(f"{folder}_{stem}", f"{folder}_{stem}", label, image.shape, split=split,
                                    image=image, files=(f"{TOP}/{folder}/polyps/{stem}.png",
                                                        f"{TOP}/{folder}/masks/{stem}.png")))
    if "mask_missing" in defects:
        stem = STEMS["test"][1]
        t.remove(f"{TOP}/test/masks/{stem}.png")
        entry.quarantine(f"test_{stem}", "unpaired_image", f"{TOP}/test/polyps/{stem}.png")
    if "empty_mask" in defects:
        stem = STEMS["validation"][0]
        t.png(f"{TOP}/validation/masks/{stem}.png", np.zeros(SHAPE, np.uint8))
        entry.quarantine(f"validation_{stem}", "empty_label", f"{TOP}/validation/masks/{stem}.png")
    return t.expected([entry], defects)
