"""OIMHS retinal OCT: ``Images/<eye>/<n>.png``, each an RGB PNG 1024 px wide holding the
B-scan in columns 0-511 and its colour-coded mask in columns 512-1023 (notes: oimhs.md).

Kept at the real width so study.yaml's crops (x [0, 512) image, [512, 1024) label) apply as they
are; 24 rows. Colours: yellow choroid 1, green retina 2, blue intraretinal cyst 3, red macular
hole 4 (eye 1 only); one scan has an anti-aliased stray colour (128, 128, 0) that becomes
background. Eye folder names are not documented; ``1``, ``2`` assumed. Case ``<eye>_<n>``,
patient = eye.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, box, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "oimhs"
FOLDER = "oimhs"
ENTRIES = ("oimhs",)
DEFECTS = {
    "truncated_png": "Images/2/2.png is truncated",
    "narrow_scan": "Images/1/3.png is 1000 px wide: the label crop [512, 1024) is 488 px",
}
ROWS, HALF = 24, 512
COLOURS = {1: (255, 255, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 0, 0)}
SCANS = (("1", "1"), ("1", "2"), ("1", "3"), ("2", "1"), ("2", "2"))


def _layers(r: np.random.Generator, hole: bool, width: int = HALF) -> np.ndarray:
    label = np.zeros((ROWS, width), np.uint8)
    cols = np.arange(width)
    top = (7 + 2 * np.sin(cols / width * 3.1 + r.uniform(0, 1))).astype(int)
    for c in range(width):
        label[top[c]:17, c] = 2                                        # retina
        label[17:21, c] = 1                                            # choroid below, touching
    label[ellipse((ROWS, width), (12, width * 0.6), (2.5, 30)) & (label == 2)] = 3
    if hole:
        label[box((ROWS, width), (0, width // 2 - 20), (12, width // 2 + 20)) & (label == 2)] = 4
    return label


def _scan(t: Tree, eye: str, n: str, width: int = 2 * HALF):
    r = t.rng(eye, n)
    label = _layers(r, eye == "1", width - HALF)
    grey = grey_image(r, np.pad(label, ((0, 0), (0, HALF - label.shape[1]))), {1: 150, 2: 110, 3: 20, 4: 15}, 10, 15)
    mask = np.zeros(label.shape + (3,), np.uint8)
    for value, colour in COLOURS.items():
        mask[label == value] = colour
    stored = label.copy()
    if (eye, n) == ("2", "1"):
        mask[16, 100:104] = (128, 128, 0)                             # anti-aliased edge colour
        stored[16, 100:104] = 0
    png = np.concatenate([np.stack([grey] * 3, axis=-1), mask], axis=1)
    t.png(f"Images/{eye}/{n}.png", png)
    return png[:, :HALF], stored


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("oimhs", 2, {1: "choroid", 2: "retina", 3: "intraretinal_cysts", 4: "macular_hole"},
                  notes="labels: same file, crops x [0, 512) | [512, 1024); colours -> ids")
    for eye, n in SCANS:
        image, label = _scan(t, eye, n)
        entry.cases.append(Case(f"{eye}_{n}", eye, label, image.shape, image=image, files=(f"Images/{eye}/{n}.png",)))
    if "truncated_png" in defects:
        t.truncate("Images/2/2.png", 0.4)
        entry.quarantine("2_2", "unreadable", "Images/2/2.png")
    if "narrow_scan" in defects:
        _scan(t, "1", "3", width=1000)
        entry.quarantine("1_3", "shape_mismatch", "Images/1/3.png")
    return t.expected([entry], defects)
