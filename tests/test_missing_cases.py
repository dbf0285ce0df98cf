"""Nothing lost when cases go missing: the split ledger only grows, a dataset that lost cases or has
none fails loudly instead of writing an empty store or a smaller split, stale partial stores go.

The scenario of issue 13: a labels folder that is empty for one run (an unmounted share) gave an
empty store, an empty split and an emptied ledger, and when the files returned 10 of 22 cases
changed split, test -> train among them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import yaml

from medpipe import cli
from medpipe.io.quarantine import read_quarantine
from medpipe.splits import MissingCasesError, split_corpus, split_dataset
from medpipe.store import DatasetStore, StoreWriter, remove_stale

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def write_raw(root, case_ids):
    """A 2D dataset of tiny PNG pairs, one patient per case (the split moves single cases)."""
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, case_id in enumerate(case_ids):
        image = np.full((8, 8), 10 + i, np.uint8)
        label = np.zeros((8, 8), np.uint8)
        label[2:5, 2:5] = 1
        iio.imwrite(root / f"images/{case_id}.png", image)
        iio.imwrite(root / f"labels/{case_id}.png", label)


def write_config(root, **sections):
    config = {"datasets": {"ds": {"modality": "xray", "ndim": 2, "images": "images/*.png", "labels": "labels/*.png",
                                  "classes": {1: "thing"}, "roles": ["finetune"]}},
              "splits": {"fractions": FRACTIONS}, **sections}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root / "config.yaml"


def ingest(root, *extra):
    return cli.main(["ingest", "--config", str(root / "config.yaml"), "--dataset", "ds", "--out", "out/ds.zarr",
                     "--quarantine", "out/ds.quarantine.tsv", *extra])


def split(root, *extra):
    return cli.main(["split", "out/ds.zarr", "--config", str(root / "config.yaml"), "--out", "out/ds.tsv",
                     "--ledger", "out/ledger/ds.tsv", *extra])


def splits_by_case(path) -> dict[str, str]:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return dict(zip(table["case_id"], table["split"]))


CASES = [f"c{i:02d}" for i in range(22)]


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_raw(tmp_path, CASES)
    write_config(tmp_path)
    assert ingest(tmp_path) == 0 and split(tmp_path) == 0
    return tmp_path, splits_by_case(tmp_path / "out/ds.tsv")


def test_an_empty_labels_folder_fails_the_ingest_and_keeps_store_and_splits(dataset, capsys):
    root, before = dataset
    hidden = root / "labels-unmounted"
    (root / "labels").rename(hidden)  # the share is not mounted: an empty folder
    (root / "labels").mkdir()
    capsys.readouterr()
    assert ingest(root) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "case/s]" not in line]
    assert len(lines) == 1  # the error contract: one line on stderr, besides the progress bars
    message = lines[0]
    assert "datasets.ds: no case could be ingested (22 quarantined" in message
    assert "image without label" in message and "ingest.allow_empty" in message
    assert DatasetStore(root / "out/ds.zarr").case_ids == CASES  # the old store is kept
    assert len(read_quarantine(root / "out/ds.quarantine.tsv")) == 22  # the reason is on record
    assert not list((root / "out").glob("ds.zarr.*"))
    (root / "labels").rmdir()
    hidden.rename(root / "labels")
    assert ingest(root) == 0 and split(root) == 0
    assert splits_by_case(root / "out/ds.tsv") == before


def test_every_case_quarantined_is_an_error_unless_allowed(dataset, caplog):
    root, _ = dataset
    for path in (root / "labels").iterdir():
        iio.imwrite(path, np.zeros((8, 8), np.uint8))  # empty labels: every case quarantined while reading
    assert ingest(root) == 2
    assert DatasetStore(root / "out/ds.zarr").case_ids == CASES
    assert not list((root / "out").glob("ds.zarr.*"))
    assert ingest(root, "--allow-empty") == 0
    assert DatasetStore(root / "out/ds.zarr").case_ids == []
    write_config(root, ingest={"allow_empty": True})
    assert ingest(root) == 0


def test_a_glob_matching_nothing_may_be_allowed_to_give_an_empty_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path)
    assert ingest(tmp_path) == 2 and not (tmp_path / "out/ds.zarr").exists()
    assert ingest(tmp_path, "--allow-empty") == 0
    assert DatasetStore(tmp_path / "out/ds.zarr").case_ids == []


def test_cases_absent_for_one_run_get_their_splits_back(dataset):
    """Two files gone for one run (within splits.max_missing), then restored: no case moves."""
    root, before = dataset
    gone = [case for case, split_name in sorted(before.items()) if split_name == "test"][:1]
    gone += [case for case, split_name in sorted(before.items()) if split_name == "train"][:1]
    for case in gone:
        (root / f"labels/{case}.png").rename(root / f"{case}.label.bak")
    write_config(root, splits={"fractions": FRACTIONS, "max_missing": 0.1})  # 2 of 22 = 9 %
    assert ingest(root) == 0 and split(root) == 0
    during = splits_by_case(root / "out/ds.tsv")
    assert set(during) == set(CASES) - set(gone)
    assert all(during[case] == before[case] for case in during)
    ledger = splits_by_case(root / "out/ledger/ds.tsv")
    assert ledger == before  # the ledger only grows: the absent cases keep their entries
    for case in gone:
        (root / f"{case}.label.bak").rename(root / f"labels/{case}.png")
    assert ingest(root) == 0 and split(root) == 0
    assert splits_by_case(root / "out/ds.tsv") == before


def test_losing_more_than_max_missing_fails_the_split_and_writes_nothing(dataset, capsys):
    root, before = dataset
    table_before = (root / "out/ds.tsv").read_bytes()
    for case in CASES[:5]:  # 5 of 22 = 23 % > the default 10 %
        (root / f"labels/{case}.png").unlink()
    assert ingest(root) == 0
    capsys.readouterr()
    assert split(root) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "case/s]" not in line]
    assert len(lines) == 1  # the error contract: one line on stderr, besides the progress bars
    message = lines[0]
    assert "out/ledger/ds.tsv: 5 of the 22 cases of dataset 'ds' recorded there are absent now" in message
    assert "23% > splits.max_missing 10%" in message and "c00" in message
    assert (root / "out/ds.tsv").read_bytes() == table_before  # nothing written
    assert splits_by_case(root / "out/ledger/ds.tsv") == before
    assert split(root, "--max-missing", "1") == 0  # the explicit way through
    assert len(splits_by_case(root / "out/ds.tsv")) == 17
    assert splits_by_case(root / "out/ledger/ds.tsv") == before  # still every case


def write_store(path, name, cases, modality="xray"):
    with StoreWriter(path, name, modality, 2, {1: "x"}) as writer:
        for case in cases:
            writer.write_case(case, np.ones((4, 4)), np.ones((4, 4), np.uint8), patient_id=case, modality=modality,
                              spacing=[1, 1])
        return writer.publish()


def test_max_missing_from_the_config_and_the_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full, short = write_store(tmp_path / "a.zarr", "ds", CASES[:10]), write_store(tmp_path / "b.zarr", "ds", CASES[:7])
    split_dataset(full, "t.tsv", FRACTIONS, 0, ledger="l.tsv")
    with pytest.raises(MissingCasesError, match="3 of the 10 cases"):
        split_dataset(short, "t.tsv", FRACTIONS, 0, ledger="l.tsv", max_missing=0.29)
    args = ["split", str(short), "--out", "t.tsv", "--ledger", "l.tsv", "--config", "config.yaml"]
    write_config(tmp_path, splits={"fractions": FRACTIONS, "max_missing": 0.2})
    assert cli.main(args) == 2
    write_config(tmp_path, splits={"fractions": FRACTIONS, "max_missing": 0.3})
    assert cli.main(args) == 0 and len(splits_by_case("t.tsv")) == 7 and len(splits_by_case("l.tsv")) == 10


def test_the_corpus_ledger_only_grows_and_guards_each_dataset(tmp_path):
    def store(name, cases):
        return write_store(tmp_path / f"{name}.zarr", name, cases, modality="ct")

    corpus = {"fractions": {"train": 0.8, "val": 0.2, "test": 0.0}, "variants": {"full": {"train": 0.8, "val": 0.2}}}
    a, b = store("a", CASES[:20]), store("b", CASES[:10])
    ledger = tmp_path / "ledger.tsv"
    split_corpus([a, b], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger)
    first = (tmp_path / "c.tsv").read_bytes()
    store("a", CASES[:19])  # one of 20 gone: 5 %
    with pytest.raises(MissingCasesError, match="1 of the 20 cases of dataset 'a'"):
        split_corpus([a, b], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger, max_missing=0.0)
    split_corpus([a, b], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger, max_missing=0.1)
    split_corpus([a], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger, max_missing=0.1)  # b taken out: no loss
    store("b", [])  # b's store is empty (its ingest was allowed to be): every case of b is missing
    with pytest.raises(MissingCasesError, match="10 of the 10 cases of dataset 'b'"):
        split_corpus([a, b], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger, max_missing=0.1)
    store("b", CASES[:10])
    store("a", CASES[:20])
    split_corpus([a, b], [], tmp_path / "c.tsv", corpus, 0, ledger=ledger)
    assert (tmp_path / "c.tsv").read_bytes() == first


def test_a_frozen_table_moving_a_patient_moves_its_absent_ledger_entries_too(tmp_path, monkeypatch):
    """``--previous`` wins over the ledger; a carried (absent) case follows its patient, so the
    ledger never holds a patient in two splits (which would fail every later run)."""
    monkeypatch.chdir(tmp_path)

    def store(path, cases):
        with StoreWriter(path, "ds", "ct", 2, {1: "x"}) as writer:
            for case in cases:
                writer.write_case(case, np.ones((4, 4)), np.ones((4, 4), np.uint8), patient_id=case.split("_")[0],
                                  modality="ct", spacing=[1, 1])
            return writer.publish()

    cases = [f"p{p}_{c}" for p in range(10) for c in range(2)]
    split_dataset(store(tmp_path / "a.zarr", cases), "t.tsv", FRACTIONS, 0, ledger="l.tsv")
    before = splits_by_case("l.tsv")
    moved = next(s for s in ("train", "val", "test") if s != before["p0_0"])
    pd.DataFrame({"dataset": ["ds"], "case_id": ["p0_0"], "patient_id": ["p0"], "modality": ["ct"],
                  "split": [moved]}).to_csv("frozen.tsv", sep="\t", index=False)
    short = store(tmp_path / "b.zarr", [c for c in cases if c != "p0_1"])
    for _ in range(2):
        split_dataset(short, "t.tsv", FRACTIONS, 0, previous="frozen.tsv", ledger="l.tsv", max_missing=0.1)
        assert splits_by_case("t.tsv")["p0_0"] == moved
        ledger = splits_by_case("l.tsv")
        assert ledger["p0_1"] == ledger["p0_0"] == moved
        assert {c: s for c, s in ledger.items() if not c.startswith("p0_")} == {
            c: s for c, s in before.items() if not c.startswith("p0_")}


def test_ledgers_of_another_seed_are_not_kept_but_still_guard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full, short = write_store(tmp_path / "a.zarr", "ds", CASES[:10]), write_store(tmp_path / "b.zarr", "ds", CASES[:7])
    split_dataset(full, "t.tsv", FRACTIONS, 0, ledger="l.tsv")
    with pytest.raises(MissingCasesError, match="3 of the 10 cases"):
        split_dataset(short, "t.tsv", FRACTIONS, 1, ledger="l.tsv", max_missing=0.1)
    split_dataset(short, "t.tsv", FRACTIONS, 1, ledger="l.tsv", max_missing=1)
    assert sorted(splits_by_case("l.tsv")) == CASES[:7]  # entries of seed 0 dropped, not carried
    split_dataset(short, "t2.tsv", FRACTIONS, 1)
    assert splits_by_case("t.tsv") == splits_by_case("t2.tsv")


def test_a_killed_ingests_partial_store_is_removed_by_the_next_one(dataset):
    root, _ = dataset
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = root / f"out/ds.zarr.partial-{dead_pid}"
    (stale / "cases").mkdir(parents=True)
    live = root / f"out/ds.zarr.partial-{os.getppid()}"  # a running process: maybe another ingest
    live.mkdir()
    assert ingest(root) == 0
    assert not stale.exists() and live.exists()
    assert DatasetStore(root / "out/ds.zarr").case_ids == CASES


def test_a_writer_killed_between_its_renames_gets_the_old_store_back(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with StoreWriter(tmp_path / "ds.zarr", "ds", "ct", 2, {1: "x"}) as writer:
        writer.write_case("a", np.ones((4, 4)), np.ones((4, 4), np.uint8), patient_id="a", modality="ct",
                          spacing=[1, 1])
        writer.publish()
    (tmp_path / "ds.zarr").rename(tmp_path / f"ds.zarr.old-{int(dead.stdout)}")
    assert remove_stale(tmp_path / "ds.zarr") == []
    assert DatasetStore(tmp_path / "ds.zarr").case_ids == ["a"]
