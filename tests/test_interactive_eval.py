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
from medpipe.interactive.predictor import BatchedPredictor, Prediction
from medpipe.models.sam import load_model
from medpipe.models.specs import ModelSpec
from medpipe.store import DatasetStore
from medpipe.tables import COLUMNS_2D, COLUMNS_2D_OBJECTS, MissingResultError, check_complete

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
    cache = EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size, preprocess="aspect")
    union, table = eval2d.evaluate_dataset(predictor, cache, store2d, ["c0", "c1"], "tiny", seeds=(0, 1),
                                           n_iterations=2)
    assert len(calls) == 2 and cache.computed == 2  # one pass per image, not per setting/seed/iteration
    # 2 images x 3 objects (the 4 px speck is filtered) x 2 starts x 2 masks x 2 seeds x 2 predictions
    assert len(table) == 2 * 3 * 2 * 2 * 2 * 2
    assert list(table.columns) == COLUMNS_2D_OBJECTS and list(union.columns) == COLUMNS_2D
    assert len(union) == 2 * 2 * 2 * 2 * 2 * 2  # images x classes x starts x masks x seeds x predictions
    assert set(table["class"]) == {"disc", "square"} and table["dice"].between(0, 1).all()
    assert sorted(set(union["iteration"])) == [0, 1] and set(union["n_objects"]) == {1, 2}
    # a second evaluation (another process in the pipeline) reads the cache: no encoder pass at all
    again = EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size, preprocess="aspect")
    union2, table2 = eval2d.evaluate_dataset(predictor, again, store2d, ["c0", "c1"], "tiny", seeds=(0, 1),
                                             n_iterations=2)
    assert len(calls) == 2 and again.computed == 0
    pd.testing.assert_frame_equal(table, table2)  # seeded: identical results
    pd.testing.assert_frame_equal(union, union2)
    with pytest.raises(EmbeddingCacheError, match="delete the folder"):
        EmbeddingCache(tmp_path / "emb.zarr", "tiny", "another-checkpoint", predictor.img_size, preprocess="aspect")
    with pytest.raises(EmbeddingCacheError, match="preprocess"):  # made with another preprocessing: refused
        EmbeddingCache(tmp_path / "emb.zarr", "tiny", "k", predictor.img_size, preprocess="reference")


class PresetPredictor:
    """Returns the same preset masks for every call and records how it was called."""

    def __init__(self, masks):
        self.masks = np.asarray(masks)
        self.calls = []

    def predict(self, embedding, original_size, points=None, labels=None, boxes=None, mask_input=None,
                multimask=False):
        self.calls.append({"points": points, "boxes": boxes, "mask_input": mask_input, "multimask": multimask})
        return Prediction(self.masks.copy(), torch.zeros((len(self.masks), 1, 4, 4)), np.ones(len(self.masks)))


def test_union_dice_per_class_against_the_full_class_mask_and_n_predictions():
    """The paper's Dice: per image and class, all predicted objects merged vs the whole class mask, the
    pieces below the size filter included; n_iterations predictions in all (7 corrections for 8)."""
    label = np.zeros((50, 50), np.uint8)
    label[0:10, 0:10] = 1  # A, 100 px
    label[20:30, 0:10] = 1  # B, 100 px
    label[40:44, 40:44] = 1  # 16 px speck: not prompted, but part of the class mask
    label[0:10, 20:30] = 2  # C, 100 px
    objs = connected_objects(label, {1: "a", 2: "c"})
    assert [(o.class_id, int(o.mask.sum())) for o in objs] == [(1, 100), (1, 100), (2, 100)]
    predicted = np.zeros((3, 50, 50), bool)
    predicted[0] = objs[0].mask  # A exact
    predicted[1, 20:25, 0:10] = True  # half of B
    predictor = PresetPredictor(predicted)  # C: nothing
    per_object, union = eval2d.evaluate_objects(predictor, None, label.shape, objs, "box", "off", 8,
                                                np.random.default_rng(0), label)
    assert len(predictor.calls) == 8 and per_object.shape == (3, 8)  # 1 initial + 7 corrections
    assert predictor.calls[0]["points"] is None and predictor.calls[1]["points"].shape[1] == 2
    assert predictor.calls[-1]["points"].shape[1] == 2 * 7
    np.testing.assert_allclose(per_object[:, 0], [1.0, 2 * 50 / 150, 0.0])
    # class 1: 150 predicted px, all inside; the class mask has 216 px -> 2 * 150 / (150 + 216)
    assert union[1] == pytest.approx(np.full(8, 300 / 366)) and union[2] == pytest.approx(np.zeros(8))
    # the mean of the per-object Dice would be (1 + 2/3) / 2 = 0.83 for class 1: not the paper's number
    assert abs(per_object[:2, 0].mean() - union[1][0]) > 0.01


def test_classes_without_a_prompted_object_have_no_union_row(tmp_path):
    label = np.zeros((64, 64), np.uint8)
    label[10:30, 10:30] = 1
    label[50:53, 50:53] = 2  # 9 px: no object of class 2 in this image, so no prediction and no row
    image = (label * 80 + 40).astype(np.uint8)
    store = DatasetStore(write_store(tmp_path / "s.zarr", "s", 2, {1: "a", 2: "b"}, {"c0": (image, label)}))
    predictor, _ = counted_predictor()
    cache = EmbeddingCache(tmp_path / "e.zarr", "tiny", "k", predictor.img_size, preprocess="aspect")
    union, objects = eval2d.evaluate_dataset(predictor, cache, store, ["c0"], "tiny", starts=["box"],
                                             masks_settings=["off"], n_iterations=2)
    assert set(union["class_id"]) == {1} and set(objects["class_id"]) == {1}
    assert union["iteration"].tolist() == [0, 1]


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
    parts = [eval2d.evaluate_dataset(predictor, cache, store2d, ["c0", "c1"], "tiny", starts=[start],
                                     masks_settings=[masks], seeds=(0, 1), n_iterations=2)
             for start in eval2d.STARTS for masks in eval2d.MASKS]
    for index, keys in ((0, ["case", "class_id", "start", "masks", "seed", "iteration"]),
                        (1, ["case", "object", "class_id", "start", "masks", "seed", "iteration"])):
        apart = pd.concat([part[index] for part in parts], ignore_index=True)
        pd.testing.assert_frame_equal(together[index].sort_values(keys, ignore_index=True),
                                      apart.sort_values(keys, ignore_index=True))


def test_2d_protocol_on_a_volume_evaluates_each_slice_with_objects(tmp_path):
    """A 3D dataset in the 2D evaluation is split into images: one per slice that has an object.

    ``aspect``: a slice is normalised with its volume's range, so a whole-volume entry (made by the 3D
    evaluation) is read slice by slice. ``reference``: a slice is a 2D image of its own (min-max of the
    slice, resized to 1024 x 1024), never read from the volume's entry."""
    store = DatasetStore(write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"}, {"v0": volume_3d(0)}))
    label = store.label("v0")
    expected_slices = [z for z in range(len(label)) if connected_objects(label[z], store.classes)]
    predictor, calls = counted_predictor()
    cache = EmbeddingCache(tmp_path / "slices.zarr", "tiny", "k", predictor.img_size, preprocess="aspect")
    table = eval2d.evaluate_dataset(predictor, cache, store, ["v0"], "tiny", starts=["box"], masks_settings=["off"],
                                    n_iterations=1)[1]
    assert sorted(set(table["case"])) == [f"v0@z{z:04d}" for z in expected_slices]
    assert len(calls) == len(expected_slices) < len(label)  # slices without objects are never encoded
    # slice 4 has the ball's widest section (r = 8 px) and the box: 2 objects
    assert table[(table["case"] == "v0@z0004") & (table["iteration"] == 0)]["class"].tolist() == ["ball", "box"]
    # with a whole-volume entry (made by the 3D evaluation) the slices are read from it: same Dice, no pass
    whole = EmbeddingCache(tmp_path / "whole.zarr", "tiny", "k", predictor.img_size, preprocess="aspect")
    grid.evaluate_split(predictor, whole, store, ["v0"], "val", grid.make_grid([0.5], ["box"], [0.0]), ["box"], [0],
                        "t")
    passes = len(calls)
    again = eval2d.evaluate_dataset(predictor, whole, store, ["v0"], "tiny", starts=["box"], masks_settings=["off"],
                                    n_iterations=1)[1]
    assert len(calls) == passes
    np.testing.assert_allclose(again["dice"], table["dice"], atol=1e-6)
    # reference: the slices are 1024 x 1024 images with entries of their own, even beside a volume entry
    reference = EmbeddingCache(tmp_path / "ref.zarr", "tiny", "k", predictor.img_size)
    grid.evaluate_split(predictor, reference, store, ["v0"], "val", grid.make_grid([0.5], ["box"], [0.0]), ["box"],
                        [0], "t")
    images = list(eval2d.images_of_case(predictor, reference, store, "v0"))
    with_foreground = [z for z in range(len(label)) if label[z].any()]
    assert [image.image_id for image in images] == [f"v0@z{z:04d}" for z in with_foreground]
    assert all(image.original_size == (1024, 1024) and image.label.shape == (1024, 1024) for image in images)
    assert reference.has("v0@z0004") and reference.computed == len(label) + len(with_foreground)


@pytest.mark.slow
def test_cli_embed_then_eval2d_and_eval3d_per_setting(tmp_path):
    write_store(tmp_path / "d2.zarr", "d2", 2, {1: "disc", 2: "square"}, {f"c{i}": image_2d(i) for i in range(2)})
    write_splits(tmp_path / "d2.tsv", "d2", {"c0": "test", "c1": "val"})
    write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"}, {f"v{i}": volume_3d(i) for i in range(3)})
    write_splits(tmp_path / "d3.tsv", "d3", {"v0": "val", "v1": "test", "v2": "train"})
    dataset = {"modality": "ct", "images": "x", "labels": "y", "classes": {1: "a"}}
    config = {"datasets": {"d2": {**dataset, "ndim": 2, "roles": ["interactive2d"]},
                           "d3": {**dataset, "ndim": 3, "roles": ["interactive2d", "interactive3d"]}},
              "interactive": {"n_iterations": 2, "starts": ["box"], "masks": ["off"],
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
    # val + test volumes for 3D; with preprocess: reference the 2D protocol's slices (1024 x 1024 images of
    # their own) of the test volume too
    v1_slices = [f"v1@z{z:04d}" for z in range(8) if volume_3d(1)[1][z].any()]
    assert main(["embed", *common, *d3]) == 0 and entries("e3.zarr") == ["v0", "v1", *v1_slices]
    assert main(["eval2d", *common, *d2, "--out", str(tmp_path / "o2.tsv"),
                 "--out-objects", str(tmp_path / "o2.objects.tsv")]) == 0
    t2 = pd.read_csv(tmp_path / "o2.objects.tsv", sep="\t")
    # test split only: 4 objects x 2 predictions (at 1024 x 1024 the fixture's 2 x 2 px speck is 32 x 32 px,
    # above the 20 px filter, as in the reference, which filters after resizing)
    assert set(t2["case"]) == {"c0"} and len(t2) == 4 * 2
    u2 = pd.read_csv(tmp_path / "o2.tsv", sep="\t")
    assert set(u2["case"]) == {"c0"} and len(u2) == 2 * 2  # 2 classes x 2 predictions
    # the 2D protocol on the volume: its test volume's slices, read from the cache (no new entry)
    assert main(["eval2d", *common, *d3, "--start", "box", "--masks", "off", "--out", str(tmp_path / "o2v.tsv"),
                 "--out-objects", str(tmp_path / "o2v.objects.tsv")]) == 0
    assert set(pd.read_csv(tmp_path / "o2v.tsv", sep="\t")["case"].str.split("@").str[0]) == {"v1"}
    assert entries("e3.zarr") == ["v0", "v1", *v1_slices]
    assert main(["eval3d", *common, *d3, "--starts", "point", "--out-dir", str(tmp_path / "o3")]) == 0
    selected = pd.read_csv(tmp_path / "o3/selected.tsv", sep="\t")
    test = pd.read_csv(tmp_path / "o3/test.tsv", sep="\t")
    assert selected["start"].tolist() == ["point"]  # one job per first prompt
    assert set(test["case"]) == {"v1"} and set(test["split"]) == {"test"} and set(test["start"]) == {"point"}
    assert set(test["projection"]) == {selected["projection"].iloc[0]}
    assert (tmp_path / "o3/oracle.tsv").exists() and entries("e3.zarr") == ["v0", "v1", *v1_slices]


def test_redraw_first_prompt_per_grid_point_as_the_reference(monkeypatch):
    """interactive.grid3d.redraw_first_prompt: a new random point start for every grid point (the reference
    builds a new prompt generator per grid point); a grid point alone gets the draw it gets in the grid."""
    image, label = volume_3d(0)
    predictor, _ = counted_predictor()
    from medpipe.interactive.preprocess import volume

    embeddings = predictor.encode(volume(image, "reference"))
    prompts_seen = []
    original = grid.start_mask

    def spy(predictor_, embedding, size, prompt, rules):
        prompts_seen.append(None if prompt["points"] is None else prompt["points"].tolist())
        return original(predictor_, embedding, size, prompt, rules)

    monkeypatch.setattr(grid, "start_mask", spy)
    points = grid.make_grid([0.5, 0.8], ["box", "mask"], [0.0])
    meta = {"case": "v0"}
    shared = grid.evaluate_volume(predictor, embeddings, label.shape[1:], label, {1: "ball", 2: "box"}, points,
                                  ["point", "box"], [0], meta)
    assert len(prompts_seen) == 2 * 2  # objects x starts: one first prompt for the whole grid
    prompts_seen.clear()
    settings = grid.Settings3D(redraw=True)
    redrawn = grid.evaluate_volume(predictor, embeddings, label.shape[1:], label, {1: "ball", 2: "box"}, points,
                                   ["point", "box"], [0], meta, settings)
    # point start: one draw per grid point (4), different ones; box start (no randomness): one
    point_prompts = [p for p in prompts_seen if p is not None]
    assert len(point_prompts) == 2 * 4 and len(prompts_seen) == 2 * 4 + 2
    assert len({str(p) for p in point_prompts[:4]}) > 1
    box_rows = [(r["object"], r["dice"]) for r in shared if r["start"] == "box"]
    assert box_rows == [(r["object"], r["dice"]) for r in redrawn if r["start"] == "box"]
    for point in points:  # one grid point alone (the grid-point rule) has its grid draw
        alone = grid.evaluate_volume(predictor, embeddings, label.shape[1:], label, {1: "ball", 2: "box"}, [point],
                                     ["point"], [0], meta, settings)
        within = [r["dice"] for r in redrawn if r["start"] == "point" and r["projection"] == point.projection
                  and r["iou_threshold"] == point.iou_threshold]
        assert [r["dice"] for r in alone] == within
    frame = pd.DataFrame(redrawn).assign(split="test", model="m", dataset="d")
    assert grid.oracle(frame, redrawn=True)["result"].eq(grid.ORACLE_LABEL_REDRAWN).all()
    assert "redraws it per grid point" in grid.oracle(frame)["result"].iloc[0]


def test_3d_objects_follow_the_dataset_key(tmp_path):
    """datasets.<name>.interactive3d: label ids are the objects by default; listed classes are split into
    26-connected components, and `classes` limits what is evaluated (kits: tumour only)."""
    image, label = volume_3d(1)
    label[1:3, 42:46, 2:8] = 2  # a second, separate piece of class 2
    store = DatasetStore(write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball", 2: "box"}, {"v0": (image, label)}))
    predictor, _ = counted_predictor()
    cache = EmbeddingCache(tmp_path / "e.zarr", "tiny", "k", predictor.img_size)
    points = grid.make_grid([0.5], ["box"], [0.0])
    default = grid.evaluate_split(predictor, cache, store, ["v0"], "val", points, ["box"], [0], "t")
    assert default[["class", "object"]].values.tolist() == [["ball", 0], ["box", 0]]
    dataset = {"modality": "ct", "ndim": 3, "images": "x", "labels": "y", "classes": {1: "ball", 2: "box"},
               "interactive3d": {"classes": ["box"], "components": ["box"]}}
    from medpipe.config import ConfigError, validate_config

    config = validate_config({"datasets": {"d3": dataset}})
    settings = grid.Settings3D.from_config(config, "d3")
    assert settings == grid.Settings3D("paper", False, ("box",), ("box",))
    split = grid.evaluate_split(predictor, cache, store, ["v0"], "val", points, ["box"], [0], "t", settings)
    assert split[["class", "object"]].values.tolist() == [["box", 0], ["box", 1]]
    with pytest.raises(ConfigError, match=r"datasets\.d3\.interactive3d\.components: \['kidney'\]"):
        validate_config({"datasets": {"d3": {**dataset, "interactive3d": {"components": ["kidney"]}}}})
