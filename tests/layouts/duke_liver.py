"""Duke liver MRI: ``Segmentation/<patient>/<series>/images/*.dicom`` and ``.../masks/*.dicom``,
one DICOM file per slice (notes: duke_liver.md).

Cases are series folders (``0001_3``), patients the top folders; two series of patient 0001.
Slices are numbered ``IM-0001-0001.dicom`` ... with positions increasing with the number; masks
are their own DICOM series (own SeriesInstanceUID) on the same geometry, values 0/1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, grey_image
from layouts.expected import Case, Entry, Expected

NAME = "duke_liver"
FOLDER = "duke_liver"
ENTRIES = ("duke_liver",)
DEFECTS = {
    "mask_slice_missing": "Segmentation/0002/4/masks/ lacks its last slice (3 files for 4 image slices)",
    "masks_folder_missing": "Segmentation/0001/5/ has images/ but no masks/",
}
SHAPE = (4, 16, 16)
SLICE_STEP, PIXEL = 5.0, 1.5
SERIES = (("0001", 3), ("0001", 5), ("0002", 4))


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("duke_liver", 3, {1: "liver"}, notes="DICOM series folders; image values = stored values")
    for patient, series in SERIES:
        r = t.rng(patient, series)
        label = np.stack([ellipse(SHAPE[1:], (7 + r.uniform(-1, 1), 6), (5 - abs(k - 1.5), 4.5))
                          for k in range(SHAPE[0])]).astype(np.uint16)
        body = np.broadcast_to(ellipse(SHAPE[1:], (8, 8), (7, 7.5)), SHAPE)
        image = grey_image(r, np.where(body, 1, 0) + 2 * label, {1: 300, 3: 700}, 5, 30, np.uint16, 0, 4095)
        names = [f"IM-{int(series):04d}-{k + 1:04d}.dicom" for k in range(SHAPE[0])]
        z0 = 10.0 * int(patient)
        positions = [z0 + SLICE_STEP * k for k in range(SHAPE[0])]
        base = f"Segmentation/{patient}/{series}"
        common = dict(names=names, positions_z=positions, spacing_yx=(PIXEL, PIXEL), modality="MR",
                      slice_thickness=SLICE_STEP, patient_id=patient, series_number=series,
                      study_key=f"{patient}")
        t.dicom_series(f"{base}/images", image, key=f"{patient}/{series}/images", **common)
        t.dicom_series(f"{base}/masks", label, key=f"{patient}/{series}/masks", **common)
        entry.cases.append(Case(f"{patient}_{series}", patient, label.astype(np.uint8), image.shape,
                                (SLICE_STEP, PIXEL, PIXEL), image=image,
                                files=(f"{base}/images", f"{base}/masks")))
    if "mask_slice_missing" in defects:
        t.remove("Segmentation/0002/4/masks/IM-0004-0004.dicom")
        entry.quarantine("0002_4", "shape_mismatch", "Segmentation/0002/4/masks")
    if "masks_folder_missing" in defects:
        for k in range(SHAPE[0]):
            t.remove(f"Segmentation/0001/5/masks/IM-0005-{k + 1:04d}.dicom")
        t.path("Segmentation/0001/5/masks").rmdir()
        entry.quarantine("0001_5", "unpaired_image", "Segmentation/0001/5/images")
    return t.expected([entry], defects)
