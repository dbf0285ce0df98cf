"""SA-Med2D-20M (finetuning corpus): ``SAMed2Dv1/images/*.png``, one ``masks/*.png`` per object,
``SAMed2D_v1.json`` mapping ``images/<file>`` to its mask files (notes: sa_med2d.md).

Merge rules the miniature exercises (torch-em ``_process_each_image``): masks in sorted name order
get ids 1, 2, ... and later masks overwrite earlier ones (the JSON lists them unsorted here); ACDC's
``0003_000`` whole-cavity mask is skipped when the image has more than one mask (kept when alone);
``ichallenge_adam_task2`` masks are inverted (disc stored as 0); a mask whose shape differs from the
image is skipped; images without foreground afterwards or with a constant image are dropped; ids
are relabelled 1..N. One mask is entirely covered by later ones, so relabelling shifts ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, blob, box, check_defects, ellipse, grey_image, rgb_image
from layouts.expected import Case, Entry, Expected, Problem

NAME = "sa_med2d"
FOLDER = "sa_med2d"
# ONE study.yaml entry; each image's modality comes from its name prefix (the corpus split is
# stratified by it); no microscopy / histopathology prefix exists in the public release
ENTRIES = ("sa_med2d",)
MODALITY = {"ct_": "ct", "mr_": "mri", "pet_": "other", "x_ray": "xray", "ultrasound_": "ultrasound",
            "endoscopy_": "endoscopy", "fundus_": "fundus", "dermoscopy_": "dermoscopy"}
DEFECTS = {
    "mask_missing": "a mask listed in SAMed2D_v1.json is absent from masks/",
    "image_missing": "an image listed in SAMed2D_v1.json is absent from images/",
    "mask_unreadable": "a mask PNG is truncated",
}
SIZE = (24, 24)
BASE = "SAMed2Dv1"

# Each image: name stem, colour?, its mask suffixes in JSON order
# (deliberately not sorted). Builders are defined in _masks().
IMAGES = [
    ("ct_00--AbdomenCT1K--Case_00001--z_0010", False,
     ["0005_000", "0000_000", "0005_001", "0003_000"]),             # aorta covered by liver -> vanishes
    ("ct_00--AbdomenCT1K--Case_00001--z_0011", False, ["0003_000"]),
    ("ct_00--AbdomenCT1K--Case_00002--z_0003", False, []),          # listed without masks -> no foreground
    ("ct_cbf--ISLES2018--case_1--z_0002", False, ["0001_000", "0001_001"]),
    ("mr_cmr--ACDC--patient001_frame01--x_0004", False, ["0003_000", "0001_000", "0002_000"]),  # cavity skipped
    ("mr_cmr--ACDC--patient002_frame01--x_0005", False, ["0003_000"]),  # alone -> kept
    ("mr_00--BraTS2021--BraTS2021_00000--z_0077", False, ["0003_000", "0002_000", "0001_000"]),  # nested
    ("pet_00--autoPET--PETCT_0af7ffe12a--z_0101", False, ["0001_001", "0001_000"]),
    ("pet_00--autoPET--PETCT_0af7ffe12a--z_0102", False, ["0001_000"]),
    ("x_ray--Pulmonary_Chest_X-Ray_Abnormalities_seg--MCUCXR_0001_0--x_0000", False,
     ["0002_000", "0001_000", "0000_000"]),                          # 0002_000 has another shape -> skipped
    ("x_ray--covid_19_ct_cxr--cxr_0005--x_0000", False, ["0001_000", "0000_000"]),
    ("x_ray--crass--CHNCXR_0001_0--x_0000", False, ["0000_000"]),    # constant image -> dropped
    ("x_ray--crass--CHNCXR_0002_0--x_0000", False, ["0000_000"]),    # only mask has another shape -> dropped
    ("ultrasound_00--breast_ultrasound_images_dataset--benign_1--x_0000", False, ["0000_000"]),
    ("ultrasound_00--breast_ultrasound_images_dataset--malignant_3--x_0000", False, ["0000_001", "0000_000"]),
    ("endoscopy_00--kvasir_seg--cju0qkwl35piu0993l0dewei2--x_0000", True, ["0000_000"]),
    ("endoscopy_00--EndoVis_2017_RIS--instrument_dataset_1_frame000--x_0000", True, ["0002_000", "0001_000"]),
    ("fundus_photography--ichallenge_adam_task2--A0001--x_0000", True, ["0000_000"]),   # inverted mask
    ("fundus_photography--gamma--0001--x_0000", True, ["0002_000", "0001_000"]),       # cup painted over disc
    ("dermoscopy_00--isic2018_task1--ISIC_0000000--x_0000", True, ["0000_000"]),
    ("dermoscopy_00--isic2016_task1--ISIC_0000001--x_0000", True, ["0000_000"]),
]
WRONG_SHAPE = {("x_ray--Pulmonary_Chest_X-Ray_Abnormalities_seg--MCUCXR_0001_0--x_0000", "0002_000"),
               ("x_ray--crass--CHNCXR_0002_0--x_0000", "0000_000")}
CONSTANT = {"x_ray--crass--CHNCXR_0001_0--x_0000"}


def _masks(t: Tree, stem: str, suffixes: list[str]) -> dict[str, np.ndarray]:
    """Object masks (bool, image grid) per mask suffix, shaped like the structures they stand for."""
    h, w = SIZE
    r = t.rng(stem, "masks")
    if stem.startswith("ct_00--AbdomenCT1K--Case_00001--z_0010"):
        liver = ellipse(SIZE, (10, 9), (7, 6))
        return {"0000_000": ellipse(SIZE, (10, 9), (2.5, 2.5)),           # aorta, fully under the liver
                "0003_000": liver,
                "0005_000": ellipse(SIZE, (15, 15), (4, 3)),               # kidney overlapping the liver
                "0005_001": ellipse(SIZE, (19, 5), (3, 3))}                # kidney touching the liver
    if "ACDC" in stem:
        cavity = ellipse(SIZE, (12, 12), (9, 9))
        rv = ellipse(SIZE, (12, 6), (5, 3))
        myo = ellipse(SIZE, (12, 14), (6, 6)) & ~ellipse(SIZE, (12, 14), (3.5, 3.5))
        return {"0001_000": rv, "0002_000": myo, "0003_000": cavity}
    if "BraTS" in stem:
        return {"0001_000": blob(r, SIZE, (12, 12), 8), "0002_000": blob(r, SIZE, (12, 13), 5),
                "0003_000": ellipse(SIZE, (12, 13), (2, 2))}
    if "gamma" in stem:
        return {"0001_000": ellipse(SIZE, (12, 12), (6, 5)), "0002_000": ellipse(SIZE, (12, 12.5), (3, 2.5))}
    if "EndoVis" in stem:                                               # two instruments touching at the tips
        return {"0001_000": box(SIZE, (4, 0), (8, 13)), "0002_000": box(SIZE, (8, 11), (12, SIZE[1]))}
    if "MCUCXR" in stem or "cxr_0005" in stem:
        return {"0000_000": ellipse(SIZE, (12, 6), (8, 4)), "0001_000": ellipse(SIZE, (12, 17), (8, 4)),
                "0002_000": np.ones((h + 2, w), bool)}
    if "CHNCXR_0002" in stem:
        return {"0000_000": np.ones((h, w - 4), bool)}
    if "ichallenge" in stem:
        return {"0000_000": ellipse(SIZE, (11, 13), (4, 4))}
    if "CHNCXR_0001" in stem:
        return {"0000_000": box(SIZE, (3, 3), (9, 8))}
    out = {}
    for k, suffix in enumerate(sorted(suffixes)):
        centre = (6 + 11 * (k % 2) + r.integers(-1, 2), 7 + 10 * (k // 2) + r.integers(-1, 2))
        out[suffix] = blob(r, SIZE, centre, 3.5 + k)
    return out


def _merge(stem: str, masks: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The reference merge: sorted names, id = position, later overwrite, fixes, relabel."""
    dataset = stem.split("--")[1]
    instances = np.zeros(SIZE, np.uint16)
    names = sorted(f"masks/{stem}--{s}.png" for s in masks)
    by_name = {f"masks/{stem}--{s}.png": m for s, m in masks.items()}
    for idx, name in enumerate(names, start=1):
        if dataset == "ACDC" and "0003_000" in name and len(names) > 1:
            continue
        mask = by_name[name]
        if mask.shape != SIZE:
            continue
        instances[mask] = idx
    present = [v for v in np.unique(instances) if v]
    label = np.zeros_like(instances)
    for new, old in enumerate(present, start=1):
        label[instances == old] = new
    return label, [names[int(old) - 1] for old in present]


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entries = {name: Entry(name, 2, {1: "object"}, label_kind="instances",
                           notes="labels are instance ids 1..N (relabelled); attrs.instance_masks names each id")
               for name in ENTRIES}
    index: dict[str, list[str]] = {}
    for stem, colour, suffixes in IMAGES:
        masks = {s: m for s, m in _masks(t, stem, suffixes).items() if s in suffixes}
        union = np.zeros(SIZE, np.uint8)
        for suffix, mask in masks.items():
            if mask.shape == SIZE:
                union[mask] = 1 + list(masks).index(suffix) % 3
        r = t.rng(stem, "image")
        if stem in CONSTANT:
            image = np.full(SIZE + ((3,) if colour else ()), 0, np.uint8)
        elif colour:
            image = rgb_image(r, union, {1: (200, 90, 80), 2: (150, 60, 70), 3: (120, 40, 40)}, (220, 160, 140))
        else:
            image = grey_image(r, union, {1: 150, 2: 190, 3: 230}, 60, 15)
        t.png(f"{BASE}/images/{stem}.png", image)
        listed = []
        for suffix in suffixes:
            mask = masks[suffix]
            if "ichallenge_adam_task2" in stem:
                stored = np.where(mask, 0, 255).astype(np.uint8)      # disc stored as 0
            else:
                stored = np.where(mask, 255, 0).astype(np.uint8)
            rel = f"masks/{stem}--{suffix}.png"
            t.png(f"{BASE}/{rel}", stored)
            listed.append(rel)
        index[f"images/{stem}.png"] = listed

        label, instance_masks = _merge(stem, masks)
        entry = "sa_med2d"
        src, orig = stem.split("--")[1:3]
        files = (f"{BASE}/images/{stem}.png",) + tuple(f"{BASE}/{m}" for m in sorted(listed))
        if stem in CONSTANT:
            entries[entry].quarantined.append(Problem(stem, "constant_image", f"{BASE}/images/{stem}.png"))
        elif not label.any():
            entries[entry].quarantined.append(Problem(stem, "empty_label", f"{BASE}/images/{stem}.png"))
        else:
            entries[entry].cases.append(Case(
                stem, f"{src}--{orig}", label, image.shape, spacing=None, image=image, files=files,
                attrs={"instance_masks": instance_masks,
                       "modality": next(m for prefix, m in MODALITY.items() if stem.startswith(prefix))}))
    t.json(f"{BASE}/SAMed2D_v1.json", index)
    t.json(f"{BASE}/SAMed2D_v1_class_mapping_id.json",
           {"AbdomenCT1K": {"aorta": 0, "liver": 3, "kidney": 5}, "ACDC": {"rv": 1, "myo": 2, "lv": 3}})

    first = "ct_00--AbdomenCT1K--Case_00001--z_0010"
    if "mask_missing" in defects:
        rel = f"{BASE}/masks/{first}--0005_001.png"
        t.remove(rel)
        entries["sa_med2d"].quarantine(first, "missing_file", rel)
    if "image_missing" in defects:
        stem = "mr_00--BraTS2021--BraTS2021_00000--z_0077"
        t.remove(f"{BASE}/images/{stem}.png")
        entries["sa_med2d"].quarantine(stem, "unpaired_label", f"{BASE}/images/{stem}.png")
    if "mask_unreadable" in defects:
        stem = "pet_00--autoPET--PETCT_0af7ffe12a--z_0101"
        rel = f"{BASE}/masks/{stem}--0001_000.png"
        t.truncate(rel)
        entries["sa_med2d"].quarantine(stem, "unreadable", rel)
    return t.expected(list(entries.values()), defects)
