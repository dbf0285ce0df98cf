"""Humans-in-the-Loop teeth segmentation (Supervisely export): ``Teeth Segmentation PNG/d2/img/
<name>.jpg``, ``d2/masks_machine/<name>.png`` (machine colour (k, k, k) per tooth class k),
``d2/ann/<name>.jpg.json``, ``d2/masks_human/``, ``meta.json`` and
``obj_class_to_machine_color.json`` (notes: hil_toothseg.md).

Expected label: the paper's binary teeth mask (any colour -> 1); per-tooth class ids via the colour
file are in ``attrs["tooth_ids"]``. Neighbouring teeth touch. ``3`` is one of the release's
unannotated images (all-zero mask): quarantined as an empty label. Image names assumed numeric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, box, check_defects, grey_image
from layouts.expected import Case, Entry, Expected, Problem

NAME = "hil_toothseg"
FOLDER = "hil_toothseg"
ENTRIES = ("hil_toothseg",)
DEFECTS = {
    "mask_missing": "d2/masks_machine/2.png is absent",
    "mask_shape_mismatch": "d2/masks_machine/1.png is 4 columns narrower than its image",
}
TOP = "Teeth Segmentation PNG"
SHAPE = (32, 64)
PALETTE = [f"#{40 + 6 * k:02X}{200 - 5 * k:02X}{120:02X}" for k in range(1, 33)]


def _teeth(r: np.random.Generator, missing: set[int]) -> tuple[np.ndarray, list[tuple[int, list]]]:
    """Class ids 1..16 upper jaw (left to right), 17..32 lower jaw; neighbours touch."""
    ids = np.zeros(SHAPE, np.uint8)
    objects = []
    for k in range(16):
        x0, x1 = 8 + 3 * k, 8 + 3 * (k + 1)
        for cls, (y0, y1) in ((k + 1, (6, 15 - (k % 3 == 0))), (k + 17, (17 + (k % 4 == 0), 26))):
            if cls in missing:
                continue
            ids[box(SHAPE, (y0, x0), (y1, x1))] = cls
            objects.append((cls, [[x0, y0], [x1 - 1, y0], [x1 - 1, y1 - 1], [x0, y1 - 1]]))
    return ids, objects


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("hil_toothseg", 2, {1: "tooth"}, notes="binary teeth; machine colours in attrs['tooth_ids']")
    t.json(f"{TOP}/meta.json", {"classes": [{"title": str(k), "shape": "polygon", "color": PALETTE[k - 1],
                                             "geometry_config": {}, "id": 9000 + k, "hotkey": ""}
                                            for k in range(1, 33)], "tags": [], "projectType": "images"})
    t.json(f"{TOP}/obj_class_to_machine_color.json", {str(k): [k, k, k] for k in range(1, 33)})
    for name, missing in (("1", {1, 16, 32}), ("2", {8, 9, 24, 25, 26}), ("3", set(range(1, 33)))):
        r = t.rng(name)
        ids, objects = _teeth(r, missing)
        jaw = box(SHAPE, (4, 4), (28, 60)).astype(np.uint8)
        image = t.jpg(f"{TOP}/d2/img/{name}.jpg",
                      np.stack([grey_image(r, jaw + (ids > 0), {1: 90, 2: 210}, 30, 12)] * 3, axis=-1))
        machine = np.stack([ids] * 3, axis=-1)
        t.png(f"{TOP}/d2/masks_machine/{name}.png", machine)
        human = np.zeros(SHAPE + (3,), np.uint8)
        for cls in range(1, 33):
            human[ids == cls] = [int(PALETTE[cls - 1][i:i + 2], 16) for i in (1, 3, 5)]
        t.png(f"{TOP}/d2/masks_human/{name}.png", human)
        t.json(f"{TOP}/d2/ann/{name}.jpg.json", {
            "description": "", "tags": [], "size": {"height": SHAPE[0], "width": SHAPE[1]},
            "objects": [{"id": 100 * int(name) + cls, "classId": 9000 + cls, "classTitle": str(cls), "tags": [],
                         "geometryType": "polygon", "points": {"exterior": pts, "interior": []}}
                        for cls, pts in objects]})
        files = (f"{TOP}/d2/img/{name}.jpg", f"{TOP}/d2/masks_machine/{name}.png")
        if objects:
            entry.cases.append(Case(name, name, (ids > 0).astype(np.uint8), image.shape, image=image, files=files,
                                    attrs={"tooth_ids": ids}))
        else:
            entry.quarantined.append(Problem(name, "empty_label", files[1]))
    if "mask_missing" in defects:
        t.remove(f"{TOP}/d2/masks_machine/2.png")
        entry.quarantine("2", "unpaired_image", f"{TOP}/d2/img/2.jpg")
    if "mask_shape_mismatch" in defects:
        rel = f"{TOP}/d2/masks_machine/1.png"
        ids = entry.case("1").attrs["tooth_ids"][:, :-4]
        t.png(rel, np.ascontiguousarray(np.stack([ids] * 3, axis=-1)))
        entry.quarantine("1", "shape_mismatch", rel)
    return t.expected([entry], defects)
