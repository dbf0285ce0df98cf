"""PAPILA fundus images with optic disc and cup contours as text (notes: papila.md):
``PapilaDB-PAPILA-<sha>/FundusImages/RET002OD.jpg`` and
``ExpertsSegmentations/Contours/RET002OD_{disc,cup}_{exp1,exp2}.txt`` (``x y`` per line).

Two entries, ``papila_disc`` and ``papila_cup`` (expert 1, class 1 each: the paper's two binary
sets; disc and cup overlap). Labels are the contours filled with skimage.draw.polygon(rows=y, cols=x) on the
image grid; one disc contour runs past the image border (clipped). The number format of the real
text files is not known; written as ``%.2f %.2f``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, polygon, rgb_image
from layouts.expected import Case, Entry, Expected

NAME = "papila"
FOLDER = "papila"
ENTRIES = ("papila_disc", "papila_cup")
DEFECTS = {
    "cup_contour_missing": "RET003OD_cup_exp1.txt is absent (papila_cup only: image without label)",
    "contour_malformed": "RET002OS_disc_exp1.txt is not a table of numbers",
}
TOP = "PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f"
SHAPE = (40, 52)
EYES = ("RET002OD", "RET002OS", "RET003OD")


def _contour(r: np.random.Generator, centre, radii, n: int = 16) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + r.uniform(0, 0.3)
    wobble = 1 + 0.06 * r.standard_normal(n)
    xs = centre[1] + radii[1] * wobble * np.cos(theta)
    ys = centre[0] + radii[0] * wobble * np.sin(theta)
    return np.round(np.stack([xs, ys], axis=1), 2)


def _fill(points: np.ndarray) -> np.ndarray:
    return polygon(SHAPE, points[:, 1], points[:, 0])


def _text(points: np.ndarray) -> str:
    return "".join(f"{x:.2f} {y:.2f}\n" for x, y in points)


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    disc_entry = Entry("papila_disc", 2, {1: "optic_disc"}, notes="expert 1 disc contours")
    cup_entry = Entry("papila_cup", 2, {1: "optic_cup"}, notes="expert 1 cup contours")
    contours = f"{TOP}/ExpertsSegmentations/Contours"
    for eye in EYES:
        r = t.rng(eye)
        # the disc sits nasally: right of centre for OD, left for OS; RET003OD's runs off the right edge
        cx = 46 if eye == "RET003OD" else (34 if eye.endswith("OD") else 18)
        disc = {e: _contour(r, (20 + r.uniform(-1, 1), cx), (8, 7)) for e in ("exp1", "exp2")}
        cup = {e: _contour(r, (20, cx + 0.5), (4, 3.5)) for e in ("exp1", "exp2")}
        disc_mask, cup_mask = _fill(disc["exp1"]), _fill(cup["exp1"])
        retina = np.ones(SHAPE, np.uint8) + disc_mask + cup_mask
        image = t.jpg(f"{TOP}/FundusImages/{eye}.jpg",
                      rgb_image(r, retina, {1: (150, 60, 30), 2: (230, 170, 90), 3: (250, 220, 160)}, (0, 0, 0)))
        for expert in ("exp1", "exp2"):
            t.text(f"{contours}/{eye}_disc_{expert}.txt", _text(disc[expert]))
            t.text(f"{contours}/{eye}_cup_{expert}.txt", _text(cup[expert]))
        patient = eye[:-2]
        image_rel = f"{TOP}/FundusImages/{eye}.jpg"
        disc_rel, cup_rel = f"{contours}/{eye}_disc_exp1.txt", f"{contours}/{eye}_cup_exp1.txt"
        disc_entry.cases.append(Case(eye, patient, disc_mask.astype(np.uint8), image.shape, image=image,
                                     files=(image_rel, disc_rel)))
        cup_entry.cases.append(Case(eye, patient, cup_mask.astype(np.uint8), image.shape, image=image,
                                    files=(image_rel, cup_rel)))
    if "cup_contour_missing" in defects:
        rel = f"{contours}/RET003OD_cup_exp1.txt"
        t.remove(rel)
        cup_entry.quarantine("RET003OD", "unpaired_image", f"{TOP}/FundusImages/RET003OD.jpg")
    if "contour_malformed" in defects:
        rel = f"{contours}/RET002OS_disc_exp1.txt"
        t.text(rel, "<html>Moved Permanently</html>\n")
        disc_entry.quarantine("RET002OS", "unreadable", rel)
    return t.expected([disc_entry, cup_entry], defects)
