"""The 2D and 3D protocols with a tiny SAM on hand-built stores: encoder passes, tables, pairing."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medpipe.aggregate.interactive import paired_difference
from medpipe.cli import main
from medpipe.interactive import eval2d, grid
from medpipe.interactive.embeddings import EmbeddingCache, EmbeddingCacheError
from medpipe.interactive.objects import connected_objects
from medpipe.interactive.predictor import BatchedPredictor
from medpipe.models.sam import load_model
from medpipe.models.specs import ModelSpec
from medpipe.store import DatasetStore
from medpipe.tables import COLUMNS_2D, MissingResultError, check_complete

from interactive_fixtures import image_2d, volume_3d, write_splits, write_store

torch.set_num_threads(1)


def counted_predictor(max_batch=32):
    sam = load_model(ModelSpec("tiny", "tiny", None), seed=0)
    calls = []
    sam.image_encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    return BatchedPredictor(sam, "cpu", max_batch), calls


@pytest.fixture(scope="module")
def store2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2")
    store = write_store(root / "d2.zarr", "d2", 2, {1: "disc", 2: "square"}, {f"c{i}": image_2d(i) for i in range(3)})
    return DatasetStore(store)


def test_encoder_runs_once_per_image_for_all_settings_and_iterations(store2d, tmp_path):
    predictor, calls = counted_predictor(max_batch=2)  # 3 objects per image -> 2 decoder calls per step
    cache = EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size)
    table = eval2d.evaluate_dataset(predictor, cache, store2d, ["c0", "c1"], "tiny", seeds=(0, 1), n_iterations=2)
    assert len(calls) == 2 and cache.computed == 2  # one pass per image, not per setting/seed/iteration
    # 2 images x 3 objects (the 4 px speck is filtered) x 2 starts x 2 masks x 2 seeds x 3 iterations
    assert len(table) == 2 * 3 * 2 * 2 * 2 * 3
    assert list(table.columns) == COLUMNS_2D
    assert set(table["class"]) == {"disc", "square"} and table["dice"].between(0, 1).all()
    # a second evaluation (another process in the pipeline) reads the cache: no encoder pass at all
    again = EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size)
    table2 = eval2d.evaluate_dataset(predictor, again, store2d, ["c0", "c1"], "tiny", seeds=(0, 1), n_iterations=2)
    assert len(calls) == 2 and again.computed == 0
    pd.testing.assert_frame_equal(table, table2)  # seeded: identical results
    with pytest.raises(EmbeddingCacheError, match="delete the folder"):
        EmbeddingCache(tmp_path / "emb.zarr", "tiny", "another-checkpoint", predictor.img_size)


def test_point_start_uses_centre_and_best_of_three_masks(store2d, tmp_path):
    predictor, _ = counted_predictor()
    seen = []
    original = predictor.predict

    def spy(*args, **kwargs):
        seen.append((args[2], kwargs.get("multimask"), kwargs.get("mask_input")))
        return original(*args, **kwargs)

    predictor.predict = spy
    from medpipe.interactive.objects import connected_objects

    image, label = image_2d(0)
    objs = connected_objects(label, store2d.classes)
    emb = predictor.encode(np.repeat(image[None, ..., None], 3, axis=-1))[0]
    eval2d.evaluate_objects(predictor, emb, label.shape, objs, "point", "on", 2, np.random.default_rng(0))
    first_points, first_multi, first_mask = seen[0]
    assert first_multi is True and first_mask is None
    assert first_points[:, 0].tolist() == [[16, 16], [20, 44], [41, 35]]  # distance-transform maxima (x, y)
    assert seen[1][0].shape[1] == 3 and seen[1][1] is False and seen[1][2] is not None  # +2 points, mask prompt on


def test_missing_prediction_raises():
    rows = pd.DataFrame([{"dataset": "d", "case": c, "class_id": 1, "class": "a", "object": 0, "start": "box",
                          "masks": "off", "iteration": 0, "dice": 0.5, "seed": 0, "model": m}
                         for m in ("sam", "ft") for c in ("c1", "c2")])
    diff = paired_difference(rows, "sam")
    assert (diff["diff"] == 0).all()
    # the finetuned model lacks case c2: pairing must fail, not shift c1's partner
    with pytest.raises(MissingResultError, match="no partner"):
        paired_difference(rows.drop(index=3), "sam")
    keys = ["dataset", "case", "class_id", "object", "start", "masks", "iteration", "seed"]
    with pytest.raises(MissingResultError, match="missing"):
        check_complete(rows.iloc[:1], rows, keys, "test")


def test_3d_grid_reuses_each_volumes_embeddings(tmp_path):
    store = DatasetStore(write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"},
                                     {f"v{i}": volume_3d(i) for i in range(2)}))
    predictor, calls = counted_predictor()
    cache = EmbeddingCache(tmp_path / "emb3.zarr", "tiny", "k", predictor.img_size)
    points = grid.make_grid([0.5, 0.8], ["box", "single_point"], [0.0, 0.1])
    table = grid.evaluate_split(predictor, cache, store, ["v0", "v1"], "val", points, ["box", "point"], [0], "tiny")
    assert len(calls) == 2 * 8  # every slice of the two 8-slice volumes once, for all 8 grid points
    assert len(table) == 2 * 2 * 2 * 8  # volumes x objects x starts x grid points
    assert set(table["z_start"]) == {4, 3}  # ball: z 1..7 -> 4; box: z 2..5 -> 3
    chosen = grid.select_setting(table)
    assert len(chosen) == 2 and (chosen["grid_points"] == 8).all()



def test_settings_evaluated_apart_equal_settings_evaluated_together(store2d, tmp_path):
    """One job per setting (start x masks) gives the rows of the all-settings run, number for number."""
    predictor, _ = counted_predictor()
    cache = EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size)
    together = eval2d.evaluate_dataset(predictor, cache, store2d, ["c0", "c1"], "tiny", seeds=(0, 1), n_iterations=2)
    apart = pd.concat([
        eval2d.evaluate_dataset(predictor, cache, store2d, ["c0", "c1"], "tiny", starts=[start], masks_settings=[masks],
                                seeds=(0, 1), n_iterations=2)
        for start in eval2d.STARTS for masks in eval2d.MASKS], ignore_index=True)
    keys = ["case", "object", "class_id", "start", "masks", "seed", "iteration"]
    pd.testing.assert_frame_equal(together.sort_values(keys, ignore_index=True),
                                  apart.sort_values(keys, ignore_index=True))


def test_2d_protocol_on_a_volume_evaluates_each_slice_with_objects(tmp_path):
    """A 3D dataset in the 2D evaluation is split into images: one per slice that has an object."""
    store = DatasetStore(write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"}, {"v0": volume_3d(0)}))
    label = store.label("v0")
    expected_slices = [z for z in range(len(label)) if connected_objects(label[z], store.classes)]
    predictor, calls = counted_predictor()
    cache = EmbeddingCache(tmp_path / "slices.zarr", "tiny", "k", predictor.img_size)
    table = eval2d.evaluate_dataset(predictor, cache, store, ["v0"], "tiny", starts=["box"], masks_settings=["off"],
                                    n_iterations=1)
    assert sorted(set(table["case"])) == [f"v0@z{z:04d}" for z in expected_slices]
    assert len(calls) == len(expected_slices) < len(label)  # slices without objects are never encoded
    # slice 4 has the ball's widest section (r = 8 px) and the box: 2 objects
    assert table[(table["case"] == "v0@z0004") & (table["iteration"] == 0)]["class"].tolist() == ["ball", "box"]
    # with a whole-volume entry (made by the 3D evaluation) the slices are read from it: same Dice, no pass
    whole = EmbeddingCache(tmp_path / "whole.zarr", "tiny", "k", predictor.img_size)
    grid.evaluate_split(predictor, whole, store, ["v0"], "val", grid.make_grid([0.5], ["box"], [0.0]), ["box"], [0],
                        "t")
    passes = len(calls)
    again = eval2d.evaluate_dataset(predictor, whole, store, ["v0"], "tiny", starts=["box"], masks_settings=["off"],
                                    n_iterations=1)
    assert len(calls) == passes
    np.testing.assert_allclose(again["dice"], table["dice"], atol=1e-6)

@pytest.mark.slow
def test_cli_embed_then_eval2d_and_eval3d_per_setting(tmp_path):
    write_store(tmp_path / "d2.zarr", "d2", 2, {1: "disc", 2: "square"}, {f"c{i}": image_2d(i) for i in range(2)})
    write_splits(tmp_path / "d2.tsv", "d2", {"c0": "test", "c1": "val"})
    write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"}, {f"v{i}": volume_3d(i) for i in range(3)})
    write_splits(tmp_path / "d3.tsv", "d3", {"v0": "val", "v1": "test", "v2": "train"})
    dataset = {"modality": "ct", "images": "x", "labels": "y", "classes": {1: "a"}}
    config = {"datasets": {"d2": {**dataset, "ndim": 2, "roles": ["interactive2d"]},
                           "d3": {**dataset, "ndim": 3, "roles": ["interactive2d", "interactive3d"]}},
              "interactive": {"n_iterations": 1, "starts": ["box"], "masks": ["off"],
                              "grid3d": {"iou_thresholds": [0.5], "projections": ["mask", "points"],
                                         "box_extensions": [0.0]}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", str(tmp_path / "c.yaml"), "--model", "sam_tiny", "--threads", "1"]
    d2 = ["--dataset", "d2", "--store", str(tmp_path / "d2.zarr"), "--splits", str(tmp_path / "d2.tsv"),
          "--cache", str(tmp_path / "e2.zarr")]
    d3 = ["--dataset", "d3", "--store", str(tmp_path / "d3.zarr"), "--splits", str(tmp_path / "d3.tsv"),
          "--cache", str(tmp_path / "e3.zarr")]

    def entries(cache):
        return sorted(p.name for p in (tmp_path / cache).iterdir() if not p.name.startswith(("zarr", ".")))

    assert main(["embed", *common, *d2]) == 0 and entries("e2.zarr") == ["c0"]  # the test split only
    assert main(["embed", *common, *d3]) == 0 and entries("e3.zarr") == ["v0", "v1"]  # val + test volumes
    assert main(["eval2d", *common, *d2, "--out", str(tmp_path / "o2.tsv")]) == 0
    t2 = pd.read_csv(tmp_path / "o2.tsv", sep="\t")
    assert set(t2["case"]) == {"c0"} and len(t2) == 3 * 2  # test split only: 3 objects x 2 iterations
    # the 2D protocol on the volume: its test volume's slices, read from the 3D entry (no new entry)
    assert main(["eval2d", *common, *d3, "--start", "box", "--masks", "off", "--out", str(tmp_path / "o2v.tsv")]) == 0
    assert set(pd.read_csv(tmp_path / "o2v.tsv", sep="\t")["case"].str.split("@").str[0]) == {"v1"}
    assert entries("e3.zarr") == ["v0", "v1"]
    assert main(["eval3d", *common, *d3, "--starts", "point", "--out-dir", str(tmp_path / "o3")]) == 0
    selected = pd.read_csv(tmp_path / "o3/selected.tsv", sep="\t")
    test = pd.read_csv(tmp_path / "o3/test.tsv", sep="\t")
    assert selected["start"].tolist() == ["point"]  # one job per first prompt
    assert set(test["case"]) == {"v1"} and set(test["split"]) == {"test"} and set(test["start"]) == {"point"}
    assert set(test["projection"]) == {selected["projection"].iloc[0]}
    assert (tmp_path / "o3/oracle.tsv").exists() and entries("e3.zarr") == ["v0", "v1"]
