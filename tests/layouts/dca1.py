"""DCA1 coronary angiograms: one flat folder ``Database_134_Angiograms/<n>.pgm`` + ``<n>_gt.pgm``
(vessel 255) (notes: dca1.md).

Names 1, 2, 10 make natural and lexical order differ; a glob ``*.pgm`` would also match the ``_gt``
files (the contract's image glob is ``*[0-9].pgm``). Vessels are a branching tree of thin lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import draw

from layouts.common import Tree, check_defects, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "dca1"
FOLDER = "dca1"
ENTRIES = ("dca1",)
DEFECTS = {
    "gt_missing": "2_gt.pgm is absent",
    "empty_gt": "10_gt.pgm has no vessel pixel",
}
SHAPE = (24, 24)
DIR = "Database_134_Angiograms"


def _tree(r: np.random.Generator) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    trunk_end = (int(r.integers(14, 18)), int(r.integers(10, 14)))
    segments = [((1, int(r.integers(4, 8))), trunk_end), (trunk_end, (22, int(r.integers(2, 8)))),
                (trunk_end, (int(r.integers(18, 22)), 22)), ((8, 9), (3, int(r.integers(16, 22))))]
    for (r0, c0), (r1, c1) in segments:
        rr, cc = draw.line(r0, c0, r1, c1)
        mask[rr, cc] = True
    return ndimage.binary_dilation(mask, iterations=1) if r.random() < 0.5 else mask | np.roll(mask, 1, axis=1)


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("dca1", 2, {1: "vessel"}, notes="255 -> 1")
    for n in (1, 2, 10):
        r = t.rng(n)
        label = _tree(r).astype(np.uint8)
        image = grey_image(r, label, {1: 60}, 150, 15)
        t.pgm(f"{DIR}/{n}.pgm", image)
        t.pgm(f"{DIR}/{n}_gt.pgm", label * np.uint8(255))
        entry.cases.append(Case(str(n), str(n), label, image.shape, image=image,
                                files=(f"{DIR}/{n}.pgm", f"{DIR}/{n}_gt.pgm")))
    if "gt_missing" in defects:
        t.remove(f"{DIR}/2_gt.pgm")
        entry.quarantine("2", "unpaired_image", f"{DIR}/2.pgm")
    if "empty_gt" in defects:
        t.pgm(f"{DIR}/10_gt.pgm", np.zeros(SHAPE, np.uint8))
        entry.quarantine("10", "empty_label", f"{DIR}/10_gt.pgm")
    return t.expected([entry], defects)
