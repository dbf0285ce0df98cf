"""LEG 3D US (lower-leg muscles): ``{train,val,test}/<subject>/x<rest>.mha`` images and
``masksX<rest>.mha`` labels (notes: leg_3d_us.md; sub-folder and file names unverified).

Raw label values 100 soleus, 150 gastrocnemius medialis, 200 gastrocnemius lateralis, plus other
values (here 50) that become background (``label_map {100: 1, 150: 2, 200: 3, other: 0}``).
Geometry (spacing, non-zero origin) must be kept. Case ``{subject}_{rest}`` (= ``s01__1``),
patient = subject folder, publisher split in ``Case.split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipsoid, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "leg_3d_us"
FOLDER = "leg_3d_us"
ENTRIES = ("leg_3d_us",)
DEFECTS = {
    "mask_missing": "test/s04/masksX_1.mha is absent",
    "shape_mismatch": "val/s03/masksX_1.mha has another shape",
}
SHAPE = (12, 20, 16)
SPACING_XYZ = (0.2, 0.2, 0.3)
CASES = (("train", "s01"), ("train", "s02"), ("val", "s03"), ("test", "s04"))


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("leg_3d_us", 3, {1: "soleus", 2: "gastrocnemius_medialis", 3: "gastrocnemius_lateralis"},
                  notes="100/150/200 -> 1/2/3; other values -> 0")
    for split, subject in CASES:
        r = t.rng(subject)
        raw = np.zeros(SHAPE, np.uint8)
        raw[ellipsoid(SHAPE, (6, 14, 8), (7, 4, 7))] = 100                       # soleus, deep
        raw[ellipsoid(SHAPE, (6, 7, 4.5 + r.uniform(-0.3, 0.3)), (7, 3.5, 4))] = 150   # GM, touching GL
        raw[ellipsoid(SHAPE, (6, 7, 11.5), (7, 3.5, 4))] = 200                   # GL
        raw[ellipsoid(SHAPE, (6, 18, 8), (7, 1.5, 6)) & (raw == 0)] = 50         # another structure
        label = np.select([raw == 100, raw == 150, raw == 200], [1, 2, 3], 0).astype(np.uint8)
        image = grey_image(r, raw, {100: 90, 150: 110, 200: 100, 50: 180}, 40, 20)
        origin = (12.5, -3.0, 40.0 + 10 * int(subject[-1]))
        base = f"{split}/{subject}"
        t.itk(f"{base}/x_1.mha", image, SPACING_XYZ, origin, compress=True)
        t.itk(f"{base}/masksX_1.mha", raw, SPACING_XYZ, origin, compress=True)
        entry.cases.append(Case(f"{subject}__1", subject, label, SHAPE, tuple(reversed(SPACING_XYZ)), split=split,
                                image=image, files=(f"{base}/x_1.mha", f"{base}/masksX_1.mha"),
                                attrs={"origin_xyz": origin}))
    if "mask_missing" in defects:
        t.remove("test/s04/masksX_1.mha")
        entry.quarantine("s04__1", "unpaired_image", "test/s04/x_1.mha")
    if "shape_mismatch" in defects:
        rel = "val/s03/masksX_1.mha"
        t.itk(rel, np.zeros((11, 20, 16), np.uint8), SPACING_XYZ, compress=True)
        entry.quarantine("s03__1", "shape_mismatch", rel)
    return t.expected([entry], defects)
