"""JNU-IFM / FH-PS-AoP intrapartum ultrasound: ``Pubic Symphysis-Fetal Head Segmentation and Angle of
Progression/{image_mha,label_mha}/<nnnnn>.mha`` (notes: jnu_ifm.md).

Images are 3-channel stored channels first (SimpleITK array (3, Y, X), a scalar 3D image); one is
written as a 2D vector image instead, to cover both readings. Labels (Y, X): 1 pubic symphysis,
2 fetal head; 00003 shows no symphysis (kept by ingest; the paper's frame filter drops it).
The store holds the images as colour (Y, X, 3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "jnu_ifm"
FOLDER = "jnu-ifm"
ENTRIES = ("jnu-ifm",)
DEFECTS = {
    "label_missing": "label_mha/00002.mha is absent",
    "bad_channels": "image_mha/00001.mha holds 5 channels first (neither grey nor colour)",
}
TOP = "Pubic Symphysis-Fetal Head Segmentation and Angle of Progression"
SHAPE = (32, 32)


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("jnu-ifm", 2, {1: "pubic_symphysis", 2: "fetal_head"},
                  notes="(3, Y, X) channels-first images stored as (Y, X, 3)")
    for n, vector, symphysis in ((1, False, True), (2, True, True), (3, False, False)):
        case = f"{n:05d}"
        r = t.rng(case)
        label = np.zeros(SHAPE, np.uint8)
        label[ellipse(SHAPE, (20 + r.uniform(-1, 1), 19 + r.uniform(-1, 1)), (9, 10), r.uniform(0, 1))] = 2
        if symphysis:
            label[ellipse(SHAPE, (7, 7 + r.uniform(-1, 1)), (2, 5), 0.5) & (label == 0)] = 1
        grey = grey_image(r, label, {1: 220, 2: 90}, 40, 25)
        image = np.stack([grey] * 3, axis=-1)                          # grey ultrasound stored as RGB
        if vector:
            t.itk(f"{TOP}/image_mha/{case}.mha", image, (1.0, 1.0), vector=True)
        else:
            t.itk(f"{TOP}/image_mha/{case}.mha", image.transpose(2, 0, 1), (1.0, 1.0, 1.0))
        t.itk(f"{TOP}/label_mha/{case}.mha", label, (1.0, 1.0))
        entry.cases.append(Case(case, case, label, image.shape, image=image,
                                files=(f"{TOP}/image_mha/{case}.mha", f"{TOP}/label_mha/{case}.mha")))
    if "label_missing" in defects:
        t.remove(f"{TOP}/label_mha/00002.mha")
        entry.quarantine("00002", "unpaired_image", f"{TOP}/image_mha/00002.mha")
    if "bad_channels" in defects:
        rel = f"{TOP}/image_mha/00001.mha"
        t.itk(rel, np.concatenate([entry.case("00001").image.transpose(2, 0, 1)] * 2)[:5], (1.0, 1.0, 1.0))
        entry.quarantine("00001", "bad_channels", rel)
    return t.expected([entry], defects)
