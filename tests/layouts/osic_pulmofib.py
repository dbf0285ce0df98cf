"""OSIC pulmonary fibrosis CT (DICOM) with the Konya et al. organ masks (NRRD):
``train/<ID>/<n>.dcm`` and ``nrrd_<organ>/nrrd_<organ>/<ID>_<organ>.nrrd`` (the two Kaggle
archives unzipped into one folder)
(notes: osic_pulmofib.md).

Slice positions DEcrease with the file number n (the reference flips the masks against file
order); the NRRD masks carry the CT's physical geometry (origin = lowest slice), so index-with-flip
and physical alignment agree: store z = ascending position. CT stored values + RescaleIntercept
-1024 = HU (the expected image is in HU). Organ ids heart 1, lung 2, trachea 3; one lung file
stores the lungs as 2 (``> 0`` rule); one trachea file name has a space before ``_trachea``;
``nrrd_noisy`` lies outside the label glob; patient 3 has no masks (an image without label:
quarantined); a competition test patient sits in ``test/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, grey_image, tube
from layouts.expected import Case, Entry, Expected, Problem

NAME = "osic_pulmofib"
FOLDER = "osic_pulmofib"
ENTRIES = ("osic_pulmofib",)
DEFECTS = {
    "slice_unreadable": "train/ID00002637202100000000002/3.dcm is truncated",
    "heart_shape_mismatch": "ID00001637202100000000001_heart.nrrd has another shape than the CT",
}
SIZE = (16, 16)
PIXEL, STEP = 0.7, 2.5
PATIENTS = (("ID00001637202100000000001", 8), ("ID00002637202100000000002", 6), ("ID00003637202100000000003", 5))
ORGAN_IDS = {"heart": 1, "lung": 2, "trachea": 3}


def _organs(n: int) -> dict[str, np.ndarray]:
    shape = (n, *SIZE)
    lungs = np.stack([ellipse(SIZE, (8, 4.5), (5, 3)) | ellipse(SIZE, (8, 11.5), (5, 3))] * n)
    lungs[0] = False
    heart = np.zeros(shape, bool)
    heart[: n // 2] = ellipse(SIZE, (10, 8), (3, 2.5))                 # touches both lungs
    heart &= ~lungs
    trachea = tube(shape, (4, 8), (4, 8), 1.2, z_range=(n // 2, n)) & ~lungs
    return {"heart": heart, "lung": lungs, "trachea": trachea}


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("osic_pulmofib", 3, {1: "heart", 2: "lung", 3: "trachea"},
                  notes="store z = ascending slice position; image in HU")
    t.text("train.csv", "Patient,Weeks,FVC,Percent,Age,Sex,SmokingStatus\n"
           + "".join(f"{p},0,2500,70.0,66,Male,Ex-smoker\n" for p, _ in PATIENTS))
    t.text("test.csv", "Patient,Weeks,FVC,Percent,Age,Sex,SmokingStatus\n"
           "ID00419637202311204720264,6,3020,70.2,73,Male,Ex-smoker\n")
    for patient, n in PATIENTS + (("ID00419637202311204720264", 4),):
        test_patient = patient.startswith("ID00419")
        r = t.rng(patient)
        organs = _organs(n)
        label = np.zeros((n, *SIZE), np.uint8)                          # ascending position order
        for organ in ("heart", "lung", "trachea"):
            label[organs[organ]] = ORGAN_IDS[organ]
        body = np.broadcast_to(ellipse(SIZE, (8, 8), (7.5, 7.5)), label.shape)
        hu = grey_image(r, body + np.isin(label, (2, 3)) * 2 + (label == 1) * 3,
                        {1: 30, 3: -850, 4: 40}, -1000, 20, np.int16, -1024, 2000)
        z_low = -200.0 + 7 * int(patient[-1])
        positions = [z_low + STEP * (n - 1 - k) for k in range(n)]      # file k+1 at descending z
        stored = (hu[::-1] + 1024).astype(np.uint16)                    # file order = descending position
        folder = f"{'test' if test_patient else 'train'}/{patient}"
        t.dicom_series(folder, stored, [f"{k + 1}.dcm" for k in range(n)], positions, (PIXEL, PIXEL),
                       key=patient, modality="CT", slice_thickness=STEP, intercept=-1024.0, patient_id=patient)
        if test_patient:
            continue
        if patient.endswith("3"):
            entry.quarantined.append(Problem(patient, "unpaired_image", folder))   # no masks
            continue
        files = [folder]
        for organ, mask in organs.items():
            if patient.endswith("2") and organ == "heart":
                continue                                                # not every organ for every patient
            value = 2 if (organ == "lung" and patient.endswith("2")) else 1
            sep = " _" if (organ == "trachea" and patient.endswith("2")) else "_"
            rel = f"nrrd_{organ}/nrrd_{organ}/{patient}{sep}{organ}.nrrd"
            t.itk(rel, mask.astype(np.int16) * np.int16(value), (PIXEL, PIXEL, STEP), (0.0, 0.0, z_low))
            files.append(rel)
        if patient.endswith("2"):
            label[label == 1] = 0
        t.itk(f"nrrd_noisy/nrrd_noisy/{patient}_noisy.nrrd", np.roll(organs["lung"], 1, axis=2).astype(np.int16),
              (PIXEL, PIXEL, STEP), (0.0, 0.0, z_low))
        entry.cases.append(Case(patient, patient, label, label.shape, (STEP, PIXEL, PIXEL), image=hu,
                                files=tuple(files)))
    if "slice_unreadable" in defects:
        rel = "train/ID00002637202100000000002/3.dcm"
        t.truncate(rel, 0.3)
        entry.quarantine("ID00002637202100000000002", "unreadable", rel)
    if "heart_shape_mismatch" in defects:
        patient = "ID00001637202100000000001"
        rel = f"nrrd_heart/nrrd_heart/{patient}_heart.nrrd"
        t.itk(rel, np.ones((3, 12, 12), np.int16), (PIXEL, PIXEL, STEP), (0.0, 0.0, 0.0))
        entry.quarantine(patient, "shape_mismatch", rel)
    return t.expected([entry], defects)
