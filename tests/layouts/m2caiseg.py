"""m2caiSeg laparoscopy: ``m2caiSeg dataset/{train,test,trainval}/images/<frame>.jpg`` and
``groundtruth/<frame>_gt.png`` colour-coded RGB labels (notes: m2caiseg.md).

Entry = the publisher's test folder (the paper's subset, CONTRACT.md), case id = frame number;
``train/`` and ``trainval/`` (a duplicate of train plus frames) lie outside its glob. Colours
follow torch-em LABEL_MAPS (ids 0..18, 4 scissors, 5 clipper, 18 unknown); a stray colour
(1, 2, 3) on a few pixels becomes background; one label PNG is RGBA with constant alpha.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, box, check_defects, ellipse, rgb_image
from layouts.expected import Case, Entry, Expected

NAME = "m2caiseg"
FOLDER = "m2caiseg"
ENTRIES = ("m2caiseg",)
DEFECTS = {
    "gt_missing": "test/groundtruth/475_gt.png is absent",
    "gt_shape_mismatch": "test/groundtruth/0_gt.png is 4 columns narrower than its image",
}
TOP = "m2caiSeg dataset"
SHAPE = (30, 40)
COLOURS = {
    0: (0, 0, 0), 1: (0, 85, 170), 2: (0, 85, 255), 3: (0, 170, 255), 4: (0, 255, 85), 5: (0, 255, 170),
    6: (85, 0, 170), 7: (85, 0, 255), 8: (170, 85, 85), 9: (170, 170, 170), 10: (85, 170, 0), 11: (85, 170, 255),
    12: (85, 255, 0), 13: (85, 255, 170), 14: (170, 0, 255), 15: (255, 0, 255), 16: (255, 255, 0), 17: (255, 0, 0),
    18: (170, 0, 85),
}
CLASSES = {1: "grasper", 2: "bipolar", 3: "hook", 4: "scissors", 5: "clipper", 6: "irrigator", 7: "specimen_bag",
           8: "trocars", 9: "clip", 10: "liver", 11: "gall_bladder", 12: "fat", 13: "upper_wall", 14: "artery",
           15: "intestine", 16: "bile", 17: "blood", 18: "unknown"}
STRAY = (1, 2, 3)
# (folder, frame, organ ids, tool id, RGBA?)
FRAMES = (("train", "00", (10, 11, 12), 1, False), ("train", "225", (10, 13, 18), 3, True),
          ("test", "0", (12, 11, 15), 4, True), ("test", "115", (10, 11, 17), 2, False),
          ("test", "475", (10, 16, 18), 5, False))


def _scene(r: np.random.Generator, organs: tuple[int, ...], tool: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[:, :] = organs[0]                                              # organ filling the view
    label[blob(r, SHAPE, (18 + r.integers(-2, 3), 14), 8)] = organs[1]   # touching organ
    label[ellipse(SHAPE, (6, 30), (4, 7))] = organs[2]
    label[box(SHAPE, (0, 0), (SHAPE[0], 3))] = 0                         # out of frame (black border)
    shaft = box(SHAPE, (12, 22), (15, SHAPE[1]))                         # instrument entering from the right
    tip = ellipse(SHAPE, (13.5, 22), (3, 2))
    label[shaft | tip] = tool
    return label


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("m2caiseg", 2, CLASSES, notes="RGB label colours -> ids; unlisted colours -> 0")
    for folder, frame, organs, tool, rgba in FRAMES:
        r = t.rng(folder, frame)
        label = _scene(r, organs, tool)
        rgb = np.zeros(SHAPE + (3,), np.uint8)
        for value, colour in COLOURS.items():
            rgb[label == value] = colour
        rgb[27:29, 35] = STRAY                                           # stray colour on 2 pixels -> 0
        stored_label = label.copy()
        stored_label[27:29, 35] = 0
        tissue = {k: (180 + 5 * (k % 4), 80 + 10 * (k % 5), 70) for k in range(1, 19)}
        image = t.jpg(f"{TOP}/{folder}/images/{frame}.jpg", rgb_image(r, label, tissue, (5, 5, 5)))
        gt = np.concatenate([rgb, np.full(SHAPE + (1,), 255, np.uint8)], axis=-1) if rgba else rgb
        t.png(f"{TOP}/{folder}/groundtruth/{frame}_gt.png", gt)
        if folder == "test":
            entry.cases.append(Case(frame, frame, stored_label, image.shape, split=folder, image=image,
                                    files=(f"{TOP}/{folder}/images/{frame}.jpg",
                                           f"{TOP}/{folder}/groundtruth/{frame}_gt.png")))
    for src, dst in (("00", "00"), ("225", "300")):          # trainval: a copy of train/00 and one more frame
        for sub, suffix in (("images", ".jpg"), ("groundtruth", "_gt.png")):
            data = t.path(f"{TOP}/train/{sub}/{src}{suffix}").read_bytes()
            t.bytes(f"{TOP}/trainval/{sub}/{dst}{suffix}", data)
    if "gt_missing" in defects:
        t.remove(f"{TOP}/test/groundtruth/475_gt.png")
        entry.quarantine("475", "unpaired_image", f"{TOP}/test/images/475.jpg")
    if "gt_shape_mismatch" in defects:
        rel = f"{TOP}/test/groundtruth/0_gt.png"
        rgb = np.zeros((SHAPE[0], SHAPE[1] - 4, 3), np.uint8)
        rgb[:] = COLOURS[10]
        t.png(rel, rgb)
        entry.quarantine("0", "shape_mismatch", rel)
    return t.expected([entry], defects)
