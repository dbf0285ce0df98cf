"""UWaterloo skin cancer detection: ``Skin Image Data Set-{1,2}/skin_data/{melanoma,notmelanoma}/
<source>/<ID>_orig.jpg`` + ``<ID>_contour.png`` (a filled mask, 0/255 or 1-bit) (notes:
uwaterloo_skin.md).

Ids are ``{kind}_{source}_{ID}``: the same ID ``SSM10`` occurs in two source folders, one ID
contains an underscore (``nevus_1``); a ``Thumbs.db`` sits beside the images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, check_defects, rgb_image
from layouts.expected import Case, Entry, Expected

NAME = "uwaterloo_skin"
FOLDER = "uwaterloo_skin"
ENTRIES = ("uwaterloo_skin",)
DEFECTS = {
    "contour_missing": "melanoma/dermIS/LMM1_contour.png is absent",
    "contour_shape_mismatch": "notmelanoma/dermis/nevus_1_contour.png is 2 px narrower than its image",
}
SHAPE = (24, 32)
# (set, kind, source, ID, one-bit contour?)
IMAGES = [
    (1, "melanoma", "dermIS", "LMM1", False),
    (1, "melanoma", "dermIS", "SSM10", False),
    (1, "melanoma", "dermquest", "SSM10", True),
    (2, "notmelanoma", "dermis", "nevus_1", False),
]


def _folder(set_no: int, kind: str, source: str) -> str:
    return f"Skin Image Data Set-{set_no}/skin_data/{kind}/{source}"


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("uwaterloo_skin", 2, {1: "lesion"})
    for set_no, kind, source, ident, one_bit in IMAGES:
        r = t.rng(kind, source, ident)
        lesion = blob(r, SHAPE, (12 + r.integers(-2, 3), 16 + r.integers(-3, 4)), 6 + r.uniform(0, 2))
        label = lesion.astype(np.uint8)
        image = t.jpg(f"{_folder(set_no, kind, source)}/{ident}_orig.jpg",
                      rgb_image(r, label, {1: (90, 50, 40)}, (205, 150, 130)))
        contour = f"{_folder(set_no, kind, source)}/{ident}_contour.png"
        if one_bit:
            t.png(contour, lesion, one_bit=True)
        else:
            t.png(contour, label * np.uint8(255))
        entry.cases.append(Case(f"{kind}_{source}_{ident}", f"{kind}_{source}_{ident}", label, image.shape,
                                image=image, files=(f"{_folder(set_no, kind, source)}/{ident}_orig.jpg", contour)))
    t.bytes(f"{_folder(1, 'melanoma', 'dermIS')}/Thumbs.db", b"\xd0\xcf\x11\xe0thumbnail cache")
    if "contour_missing" in defects:
        t.remove(f"{_folder(1, 'melanoma', 'dermIS')}/LMM1_contour.png")
        entry.quarantine("melanoma_dermIS_LMM1", "unpaired_image", f"{_folder(1, 'melanoma', 'dermIS')}/LMM1_orig.jpg")
    if "contour_shape_mismatch" in defects:
        rel = f"{_folder(2, 'notmelanoma', 'dermis')}/nevus_1_contour.png"
        t.png(rel, entry.case("notmelanoma_dermis_nevus_1").label[:, :-2] * np.uint8(255))
        entry.quarantine("notmelanoma_dermis_nevus_1", "shape_mismatch", rel)
    return t.expected([entry], defects)
