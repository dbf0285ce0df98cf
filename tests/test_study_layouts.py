"""Every dataset entry of config/study.yaml, unchanged, on a generated miniature of its distributed
layout: ingest, then split; case ids, patient ids, stored labels (classes or instances), shapes,
spacing and quarantined cases with their reasons as the miniature states them.

The miniatures (tests/layouts/, one module per publisher layout: same folders, file names and
formats, seeded) say what a correct ingest must make of them (``Expected``); the entries are taken
from config/study.yaml with ``/path/to/data`` replaced by the miniatures' root, so a study.yaml
glob, regex or label rule that does not fit the real layout fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from medpipe.config import validate_config
from medpipe.data.corpus import gather_corpus, ingest_part, plan_corpus
from medpipe.data.ingest import ingest_dataset
from medpipe.io.quarantine import read_quarantine
from medpipe.splits import SPLITS, read_split_table, split_dataset
from medpipe.store import DatasetStore

layouts = pytest.importorskip("layouts", reason="tests/layouts (the miniature generators) is not in this checkout")

STUDY = Path(__file__).resolve().parents[1] / "config" / "study.yaml"
CHUNKS = {"chunks_2d": [64, 64], "chunks_3d": [4, 32, 32]}

# how each kind of bad input must read in the quarantine table
REASONS = {
    "unpaired_image": r"image without label",
    "unpaired_label": r"label without image|image listed in the index does not exist",
    "missing_file": r"expected \d+ label files|does not exist|image without label|slices without label",
    "shape_mismatch": r"shape mismatch|different shapes",
    "empty_label": r"empty label",
    "constant_image": r"constant image",
    "unknown_value": r"label values not in|label colours not in|is not one of the dataset's classes",
    "unreadable": r"not a readable|cannot read|not readable|not a contour file|contour needs|unexpected error",
    "missing_slice": r"slices differ|slices without|without image \[",
    "bad_channels": r"channels|but the dataset is 2D|colour",
}


def study_entries() -> dict[str, dict]:
    return yaml.safe_load(STUDY.read_text())["datasets"]


def entry_spec(name: str, data_root: Path) -> dict:
    """The study.yaml entry ``name`` with its data paths under ``data_root``, validated."""
    text = yaml.safe_dump({"datasets": {name: study_entries()[name]}})
    config = validate_config(yaml.safe_load(text.replace("/path/to/data", str(data_root))))
    return config["datasets"][name]


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory):
    """Each miniature written once (with no defect) under one data root."""
    root = tmp_path_factory.mktemp("data")
    return root, layouts.make_all(root, seed=0)


def ingest_entry(name: str, spec: dict, out: Path, allow_empty: bool = False):
    if spec.get("layout") == "sa_med2d":  # the corpus: plan -> parts -> gather, as the workflow runs it
        plan_corpus(name, spec, 2, out / f"{name}.plan")
        parts = [out / f"{name}.part{k}" for k in range(2)]
        for k, part in enumerate(parts):
            ingest_part(name, spec, out / f"{name}.plan", k, part)
        gather_corpus(name, spec, parts, out / f"{name}.zarr", out / f"{name}.tsv", allow_empty=allow_empty)
    else:
        ingest_dataset(name, spec, out / f"{name}.zarr", out / f"{name}.tsv", CHUNKS, allow_empty=allow_empty)
    return DatasetStore(out / f"{name}.zarr"), read_quarantine(out / f"{name}.tsv")


def check_quarantine(rows, expected, module_root: Path) -> None:
    """Exactly the expected cases are refused, each with a reason of its kind naming its file."""
    by_case = {row.case_id: row for row in rows}
    assert sorted(by_case) == sorted(p.case_id for p in expected), [r.problem for r in rows]
    for problem in expected:
        row = by_case[problem.case_id]
        text = " ".join((row.problem, row.image, row.label))
        assert re.search(REASONS[problem.kind], row.problem), (problem, row.problem)
        named = str(module_root / problem.path)
        assert named in text or Path(problem.path).name in text, (problem, text)


def check_store(store: DatasetStore, entry) -> None:
    assert store.case_ids == entry.case_ids
    assert store.label_kind == entry.label_kind and store.classes == entry.classes
    for case in entry.cases:
        info = store.info(case.case_id)
        assert info.patient_id == case.patient_id, case.case_id
        image = store.image_array(case.case_id)
        assert tuple(image.shape) == tuple(case.image_shape), case.case_id
        if case.image is not None:
            np.testing.assert_array_equal(image[...], case.image, err_msg=case.case_id)
        label = store.label(case.case_id)
        assert label.shape == case.label.shape, case.case_id
        np.testing.assert_array_equal(label, case.label, err_msg=case.case_id)
        if case.spacing is not None:
            assert info.spacing == pytest.approx(case.spacing, rel=1e-4), case.case_id
        if "instance_masks" in case.attrs and store.layout == "cases":  # the packed layout keeps no per-case
            assert info.attrs["instance_masks"] == case.attrs["instance_masks"], case.case_id  # attributes
        if "modality" in case.attrs:  # a corpus entry: modality per case, from the name
            assert info.modality == case.attrs["modality"], case.case_id


def check_split(store_path: Path, table_path: Path, entry) -> None:
    split_dataset(store_path, table_path, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    table = read_split_table(table_path)
    assert sorted(table["case_id"]) == entry.case_ids
    assert set(table["split"]) <= set(SPLITS)
    per_patient = table.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all(), "a patient is in two splits"
    assert dict(zip(table["case_id"], table["patient_id"])) == {c.case_id: c.patient_id for c in entry.cases}


@pytest.mark.parametrize("name", sorted(study_entries()))
def test_study_entry_ingests_its_distributed_layout(name, miniatures, tmp_path):
    root, expected = miniatures
    module = layouts.BY_ENTRY[name]
    entry = expected[module.NAME].entry(name)
    spec = entry_spec(name, root)
    store, rows = ingest_entry(name, spec, tmp_path)
    check_quarantine(rows, entry.quarantined, root / module.FOLDER)
    check_store(store, entry)
    if entry.cases:
        check_split(tmp_path / f"{name}.zarr", tmp_path / f"{name}.split.tsv", entry)


def test_every_miniature_serves_study_entries():
    served = {entry for module in layouts.GENERATORS.values() for entry in module.ENTRIES}
    assert served == set(study_entries())


@pytest.mark.parametrize("module_name", sorted(layouts.GENERATORS))
def test_bad_inputs_of_each_layout_are_quarantined_with_the_reason(module_name, tmp_path):
    """Every defect of the layout at once (a mask listed in the JSON but missing, a case folder
    without its segmentation, a truncated file, ...): those cases are refused, the rest ingested."""
    module = layouts.GENERATORS[module_name]
    root = tmp_path / "data"
    expected = module.make(root / module.FOLDER, seed=1, defects=tuple(module.DEFECTS))
    for name, entry in expected.entries.items():
        spec = entry_spec(name, root)
        # an entry whose every case has a defect is an empty store only when allowed (ingest.allow_empty)
        store, rows = ingest_entry(name, spec, tmp_path / "out", allow_empty=not entry.case_ids)
        check_quarantine(rows, entry.quarantined, root / module.FOLDER)
        assert store.case_ids == entry.case_ids
