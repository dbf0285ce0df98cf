"""LGG MRI (Kaggle): ``kaggle_3m/<TCGA case>/<case>_<k>.tif`` RGB slices (pre-contrast, FLAIR,
post-contrast) and ``<case>_<k>_mask.tif`` (0/255), one pair per axial slice (notes: lgg_mri.md).

Slices form a volume in numeric order of k (``_10`` after ``_9``); FLAIR = channel 1 (channels
carry different offsets so the pick is checkable); masks 255 -> 1. The release also holds a
redundant copy under ``lgg-mri-segmentation/kaggle_3m/`` that an anchored glob never sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "lgg_mri"
FOLDER = "lgg_mri"
ENTRIES = ("lgg_mri",)
DEFECTS = {
    "mask_slice_missing": "TCGA_HT_7473_19970826_7_mask.tif is absent",
    "slice_shape_mismatch": "TCGA_DU_5849_19950405_3.tif is 2 rows shorter than the other slices",
}
SIZE = (32, 32)
CASES = (("TCGA_CS_4941_19960909", 12), ("TCGA_DU_5849_19950405", 9), ("TCGA_HT_7473_19970826", 10))
OFFSETS = (0, 40, 80)                          # pre-contrast, FLAIR, post-contrast


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("lgg_mri", 3, {1: "glioma"}, notes="stack by numeric slice index; FLAIR channel 1; 255 -> 1")
    t.text("kaggle_3m/data.csv", "Patient,RNASeqCluster\n" + "".join(f"{c[:12]},1\n" for c, _ in CASES))
    t.text("kaggle_3m/README.md", "LGG segmentation dataset (miniature)\n")
    for case, n in CASES:
        r = t.rng(case)
        brain = ellipse(SIZE, (16, 16), (13, 11))
        label = np.zeros((n, *SIZE), np.uint8)
        image = np.zeros((n, *SIZE, 3), np.uint8)
        for k in range(n):
            if 3 <= k <= 7:
                label[k] = blob(r, SIZE, (12, 19), 2 + (2 - abs(k - 5))) & brain
            grey = grey_image(r, brain.astype(np.uint8) + label[k], {1: 100, 2: 170}, 0, 10, lo=0, hi=170)
            image[k] = np.stack([grey + o for o in OFFSETS], axis=-1)
            t.tif(f"kaggle_3m/{case}/{case}_{k + 1}.tif", image[k])
            t.tif(f"kaggle_3m/{case}/{case}_{k + 1}_mask.tif", label[k] * np.uint8(255))
        entry.cases.append(Case(case, case.rsplit("_", 1)[0], label, (n, *SIZE), None, image=image[..., 1],
                                files=tuple(f"kaggle_3m/{case}/{case}_{k + 1}.tif" for k in range(n))
                                + tuple(f"kaggle_3m/{case}/{case}_{k + 1}_mask.tif" for k in range(n))))
    first = CASES[0][0]
    for rel in entry.case(first).files:                                  # the redundant copy
        t.bytes(f"lgg-mri-segmentation/{rel}", t.path(rel).read_bytes())
    if "mask_slice_missing" in defects:
        rel = "kaggle_3m/TCGA_HT_7473_19970826/TCGA_HT_7473_19970826_7_mask.tif"
        t.remove(rel)
        entry.quarantine("TCGA_HT_7473_19970826", "missing_slice", "kaggle_3m/TCGA_HT_7473_19970826/"
                         "TCGA_HT_7473_19970826_7.tif")
    if "slice_shape_mismatch" in defects:
        rel = "kaggle_3m/TCGA_DU_5849_19950405/TCGA_DU_5849_19950405_3.tif"
        t.tif(rel, np.zeros((SIZE[0] - 2, SIZE[1], 3), np.uint8))
        entry.quarantine("TCGA_DU_5849_19950405", "shape_mismatch", rel)
    return t.expected([entry], defects)
