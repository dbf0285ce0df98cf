"""Ids that pandas would read as missing (`NA`, `null`, `None`, `nan`) survive every stage.

Issue 13: such case ids ingested and split, then `medpipe embed` failed with a TypeError and the
semantic split reader reported `[nan]` missing, because tables were read with pandas' default NA
strings. Every table reader goes through `medpipe.files.read_tsv` or `medpipe.splits.read_split_table`.
"""

from __future__ import annotations

import imageio.v3 as iio
import pandas as pd
import pytest
import yaml

from medpipe import files
from medpipe.aggregate.semantic import load_results
from medpipe.cli import main
from medpipe.finetune.data import corpus_cases
from medpipe.semantic.data import read_split
from medpipe.store import DatasetStore
from medpipe.tables import COLUMNS_2D, read_result_table

from interactive_fixtures import image_2d

NA_IDS = ["NA", "null", "None", "nan", "NaN", "N_A", "007"]


def test_read_tsv_keeps_names_as_text_and_empty_numbers_missing(tmp_path):
    frame = pd.DataFrame({"dataset": ["NA", "null"], "case": ["None", "007"], "model": ["nan", "NaN"],
                          "dice": [0.5, float("nan")], "seed": [0, 1]})
    files.write_tsv(frame, tmp_path / "t.tsv")
    back = files.read_tsv(tmp_path / "t.tsv")
    assert back["dataset"].tolist() == ["NA", "null"] and back["case"].tolist() == ["None", "007"]
    assert back["model"].tolist() == ["nan", "NaN"]
    assert back["dice"].iloc[0] == 0.5 and pd.isna(back["dice"].iloc[1]) and back["seed"].tolist() == [0, 1]
    assert read_result_table(tmp_path / "t.tsv")["case"].tolist() == ["None", "007"]  # the result-table reader


def test_semantic_results_with_na_ids_aggregate_by_name(tmp_path):
    rows = [{"method": "sam_unetr", "backbone": "None", "decoder_init": "random", "dataset": "NA", "seed": 0,
             "case_id": case, "class_id": 1, "class_name": "null", "dice": 0.5} for case in NA_IDS]
    files.write_tsv(pd.DataFrame(rows), tmp_path / "r.tsv")
    frame = load_results([tmp_path / "r.tsv"])
    assert sorted(frame["case_id"]) == sorted(NA_IDS) and set(frame["backbone"]) == {"None"}
    assert set(frame["dataset"]) == {"NA"} and set(frame["class_name"]) == {"null"}
    assert frame["setting"].iloc[0] == "SAM-UNETR None, random decoder"


@pytest.mark.slow
def test_na_ids_through_ingest_split_embed_eval2d_and_aggregation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for i, case_id in enumerate(NA_IDS):
        image, label = image_2d(i)
        iio.imwrite(tmp_path / f"images/{case_id}.png", image)
        iio.imwrite(tmp_path / f"labels/{case_id}.png", label)
    config = {"datasets": {"NA": {"modality": "xray", "ndim": 2, "images": "images/*.png", "labels": "labels/*.png",
                                  "classes": {1: "null", 2: "None"},
                                  "roles": ["finetune", "interactive2d", "semantic2d"]}},
              "splits": {"fractions": {"train": 0.43, "val": 0.28, "test": 0.29}},
              "models": {"None": {"type": "tiny", "checkpoint": None}},
              "interactive": {"n_iterations": 1, "starts": ["box"], "masks": ["off"]},
              "aggregate": {"n_boot": 10}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", "c.yaml"]
    assert main(["ingest", *common, "--dataset", "NA", "--out", "r/NA.zarr", "--quarantine", "r/NA.q.tsv"]) == 0
    assert DatasetStore("r/NA.zarr").case_ids == sorted(NA_IDS)
    assert main(["split", "r/NA.zarr", *common, "--out", "r/NA.tsv", "--ledger", "r/ledger/NA.tsv"]) == 0
    assert main(["split-corpus", "r/NA.zarr", "--dataset-splits", "r/NA.tsv", *common, "--out", "r/corpus.tsv",
                 "--ledger", "r/ledger/corpus.tsv"]) == 0
    split = read_split("r/NA.tsv", "NA", DatasetStore("r/NA.zarr"))  # the semantic stage's reader
    assert sorted(sum(split.values(), [])) == sorted(NA_IDS)
    corpus = corpus_cases("r/corpus.tsv", "train", "full")  # the finetune stage's reader
    assert set(corpus["case_id"]) == set(split["train"]) | set(split["val"])
    model = ["--model", "None", "--dataset", "NA", "--store", "r/NA.zarr", "--splits", "r/NA.tsv",
             "--cache", "r/emb.zarr", "--threads", "1"]
    assert main(["embed", *common, *model]) == 0
    assert main(["eval2d", *common, *model, "--out", "r/e2d.tsv", "--out-objects", "r/e2d.objects.tsv"]) == 0
    table = read_result_table("r/e2d.tsv", COLUMNS_2D)
    assert set(table["case"]) == set(split["test"]) and set(table["dataset"]) == {"NA"}
    assert set(table["model"]) == {"None"} and set(table["class"]) <= {"null", "None"}
    assert main(["aggregate-interactive", *common, "--tables2d", "r/e2d.tsv", "--objects2d", "r/e2d.objects.tsv",
                 "--tables", "r/tables", "--figures", "r/figures"]) == 0
    summary = files.read_tsv("r/tables/interactive2d_summary.tsv")
    assert set(summary["dataset"]) == {"NA"} and set(summary["model"]) == {"None"}
