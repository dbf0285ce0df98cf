"""HaN-Seg head-and-neck CT: ``HaN-Seg/set_1/case_XX/case_XX_IMG_CT.nrrd`` (+ an unused, not
co-registered ``case_XX_IMG_MR_T1.nrrd``) and one ``case_XX_OAR_<organ>.seg.nrrd`` per organ
(notes: han_seg.md).

Class ids by organ NAME (the study's 30-organ list), not by file position: case_02 lacks
Parotid_L, so torch-em's positional ids would shift there. Brainstem and SpinalCord overlap by a
few voxels; the later file in sorted order (SpinalCord) wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layouts.common import Tree, check_defects, ellipse, ellipsoid, grey_image, tube
from layouts.expected import Case, Entry, Expected

NAME = "han_seg"
FOLDER = "han-seg"
ENTRIES = ("han-seg",)
DEFECTS = {
    "oar_shape_mismatch": "case_03_OAR_Brainstem.seg.nrrd has another grid than the CT",
    "unknown_organ": "case_01 holds case_01_OAR_Tongue.seg.nrrd, an organ outside the class list",
    "ct_missing": "case_02/ has OAR files but no case_02_IMG_CT.nrrd",
}
ORGANS = ["A_Carotid_L", "A_Carotid_R", "Arytenoid", "Bone_Mandible", "Brainstem", "BuccalMucosa", "Cavity_Oral",
          "Cochlea_L", "Cochlea_R", "Cricopharyngeus", "Esophagus_S", "Eye_AL", "Eye_AR", "Eye_PL", "Eye_PR",
          "Glnd_Lacrimal_L", "Glnd_Lacrimal_R", "Glnd_Submand_L", "Glnd_Submand_R", "Glnd_Thyroid", "Glottis",
          "Larynx_SG", "Lips", "OpticChiasm", "OpticNrv_L", "OpticNrv_R", "Parotid_L", "Parotid_R", "Pituitary",
          "SpinalCord"]
CLASSES = {k: name for k, name in enumerate(ORGANS, start=1)}
SHAPE = (10, 16, 16)
SPACING_XYZ = (0.6, 0.6, 2.0)
BASE = "HaN-Seg/set_1"


def _organs(r: np.random.Generator) -> dict[str, np.ndarray]:
    """Binary organ masks on the CT grid (z = 0 caudal)."""
    d = r.uniform(-0.5, 0.5)
    mandible = np.zeros(SHAPE, bool)
    mandible[1:4] = ellipse(SHAPE[1:], (5, 8), (4, 6)) & ~ellipse(SHAPE[1:], (6, 8), (3, 4.5))
    return {
        "Bone_Mandible": mandible,
        "Brainstem": tube(SHAPE, (10 + d, 8), (10, 8), 1.6, z_range=(5, 10)),
        "SpinalCord": tube(SHAPE, (11 + d, 8), (10, 8), 1.2, z_range=(0, 6)),       # overlaps the brainstem
        "Parotid_L": ellipsoid(SHAPE, (4, 9, 13), (1.5, 2, 1.5)),
        "Parotid_R": ellipsoid(SHAPE, (4, 9, 3), (1.5, 2, 1.5)),
    }


def make(root: str | Path, seed: int = 0, defects=()) -> Expected:
    defects = check_defects(NAME, defects, DEFECTS)
    t = Tree(root, NAME, FOLDER, seed)
    entry = Entry("han-seg", 3, CLASSES, notes="class per file by organ name; later sorted file wins overlaps")
    spacing = tuple(reversed(SPACING_XYZ))
    for case in ("case_01", "case_02", "case_03"):
        r = t.rng(case)
        organs = _organs(r)
        if case == "case_02":
            del organs["Parotid_L"]
        label = np.zeros(SHAPE, np.uint8)
        files = []
        for organ in sorted(organs):                        # sorted file names = sorted organ names here
            label[organs[organ]] = ORGANS.index(organ) + 1
            rel = f"{BASE}/{case}/{case}_OAR_{organ}.seg.nrrd"
            t.itk(rel, organs[organ].astype(np.uint8), SPACING_XYZ, (0.0, 0.0, 0.0),
                  meta={"Segment0_Name": organ, "Segment0_LabelValue": "1"}, compress=True)
            files.append(rel)
        head = np.broadcast_to(ellipse(SHAPE[1:], (8, 8), (7.5, 7)), SHAPE)
        image = grey_image(r, head + (label > 0) + 3 * (label == 4), {1: 40, 2: 60, 5: 700}, -1000, 15,
                           np.int16, -1024, 3071)
        t.itk(f"{BASE}/{case}/{case}_IMG_CT.nrrd", image, SPACING_XYZ, (0.0, 0.0, 0.0), compress=True)
        mr = grey_image(r, np.zeros((8, 12, 12), np.uint8), {}, 300, 40, np.int16, 0, 4095)
        t.itk(f"{BASE}/{case}/{case}_IMG_MR_T1.nrrd", mr, (0.8, 0.8, 2.5), (5.0, -3.0, 12.0), compress=True)
        entry.cases.append(Case(case, case, label, SHAPE, spacing, image=image,
                                files=(f"{BASE}/{case}/{case}_IMG_CT.nrrd", *files)))
    if "oar_shape_mismatch" in defects:
        rel = f"{BASE}/case_03/case_03_OAR_Brainstem.seg.nrrd"
        t.itk(rel, np.ones((4, 6, 6), np.uint8), SPACING_XYZ, (3.0, 3.0, 10.0), compress=True)
        entry.quarantine("case_03", "shape_mismatch", rel)
    if "unknown_organ" in defects:
        rel = f"{BASE}/case_01/case_01_OAR_Tongue.seg.nrrd"
        t.itk(rel, ellipsoid(SHAPE, (3, 6, 8), (1, 2, 2)).astype(np.uint8), SPACING_XYZ, (0.0, 0.0, 0.0),
              compress=True)
        entry.quarantine("case_01", "unknown_value", rel)
    if "ct_missing" in defects:
        t.remove(f"{BASE}/case_02/case_02_IMG_CT.nrrd")
        entry.quarantine("case_02", "unpaired_label", f"{BASE}/case_02/case_02_OAR_Bone_Mandible.seg.nrrd")
    return t.expected([entry], defects)
