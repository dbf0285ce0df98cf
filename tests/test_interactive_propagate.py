"""3D prompt propagation: prompts of each projection mode, box extension, IoU stop, grid selection."""

import numpy as np
import pandas as pd
import pytest
import torch

from medpipe.interactive import grid, propagate3d
from medpipe.interactive.predictor import Prediction
from medpipe.metrics import dice
from medpipe.tables import MissingResultError


def square(shape=(40, 40), y0=10, y1=30, x0=8, x1=28):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_box_extension_grows_each_side_by_fraction_of_side():
    mask = square()  # rows 10..29, cols 8..27: 20 x 20
    assert propagate3d.extended_box(mask, 0.0).tolist() == [8, 10, 28, 30]
    assert propagate3d.extended_box(mask, 0.1).tolist() == [6, 8, 30, 32]  # round(0.1 * 20) = 2 px
    assert propagate3d.extended_box(mask, 0.5).tolist() == [0, 0, 38, 40]  # clipped to the image
    assert propagate3d.extended_box(mask, 3).tolist() == [5, 7, 31, 33]  # >= 1: fixed pixels
    # micro-sam grows by the float and rounds afterwards (half to even): 0.1 x 15 = 1.5 px per side
    narrow = square(x0=8, x1=23)  # cols 8..22: 15 wide
    assert propagate3d.extended_box(narrow, 0.1).tolist() == [6, 8, 24, 32]  # 6.5 -> 6, 24.5 -> 24


def test_prompts_of_each_projection_mode():
    mask = square()
    # single_point: the maximum of the smoothed distance to the outer boundary inside the extended box.
    # With extension 0 a rectangle fills its crop, the crop holds no boundary, and the distance grows
    # from the crop's corner (scipy and bioimage-cpp alike): the reference picks the far corner.
    single = propagate3d.projection_prompts(mask, "single_point", 0.0)
    assert single["points"].tolist() == [[27, 29]] and single["labels"].tolist() == [1]
    assert single["box"] is None and not single["use_mask"]
    centred = propagate3d.projection_prompts(mask, "single_point", 0.25)["points"]
    assert np.abs(centred - np.array([17.5, 19.5])).max() <= 1  # with background in the crop: the centre

    box = propagate3d.projection_prompts(mask, "box", 0.1)
    assert box["points"] is None and box["box"].tolist() == [6, 8, 30, 32] and not box["use_mask"]

    masked = propagate3d.projection_prompts(mask, "mask", 0.0)
    assert masked["box"].tolist() == [8, 10, 28, 30] and masked["use_mask"] and masked["points"] is None

    points = propagate3d.projection_prompts(mask, "points", 0.25)
    pos = points["points"][points["labels"] == 1]
    neg = points["points"][points["labels"] == 0]
    assert len(pos) >= 1 and len(neg) >= 1
    assert all(mask[y, x] for x, y in pos)  # positives inside the object
    assert not any(mask[y, x] for x, y in neg)  # negatives outside it, inside the extended box
    x0, y0, x1, y1 = propagate3d.extended_box(mask, 0.25)
    assert all(x0 <= x < x1 and y0 <= y < y1 for x, y in neg)
    # the inner maximum of a square's smoothed distance transform is its centre
    assert np.abs(pos - np.array([17.5, 19.5])).max() <= 1.5

    both = propagate3d.projection_prompts(mask, "points_and_mask", 0.25)
    assert both["use_mask"] and both["box"] is None and np.array_equal(both["points"], points["points"])
    with pytest.raises(ValueError, match="unknown projection"):
        propagate3d.projection_prompts(mask, "lasso", 0.0)


class SliceOracle:
    """A stand-in predictor that returns a preset mask per slice and records the prompts it got."""

    def __init__(self, masks):
        self.masks = masks
        self.calls = []

    def mask_logits_from_binary(self, masks, rules="paper"):
        return torch.zeros((len(masks), 1, 4, 4))

    def predict(self, embedding, original_size, points=None, labels=None, boxes=None, mask_input=None, multimask=False):
        z = int(np.asarray(embedding).ravel()[0])
        self.calls.append((z, boxes, mask_input is not None))
        return Prediction(self.masks[z][None], torch.zeros((1, 1, 4, 4)), np.ones(1))


def test_iou_stop_and_volume_ends():
    z_count = 9
    masks = np.stack([square() for _ in range(z_count)])
    masks[1] = square(y0=10, y1=30, x0=8, x1=14)  # IoU with the full square = 0.3
    masks[7] = square(y0=10, y1=30, x0=8, x1=24)  # IoU = 0.8
    embeddings = np.arange(z_count, dtype=float)[:, None]
    oracle = SliceOracle(masks)
    out = propagate3d.propagate(oracle, embeddings, (40, 40), masks[4], 4, propagate3d.GridPoint(0.5, "box", 0.0))
    # down: 3, 2 kept; 1 has IoU 0.3 < 0.5 -> stop (discarded). up: 5, 6, 7 (IoU 0.8), 8 (IoU 0.8) kept.
    assert out.any(axis=(1, 2)).tolist() == [False, False, True, True, True, True, True, True, True]
    assert [c[0] for c in oracle.calls] == [3, 2, 1, 5, 6, 7, 8]
    # the next slice is prompted from the previous *predicted* mask: slice 8 gets slice 7's box
    assert oracle.calls[-1][1].tolist() == [[8, 10, 24, 30]]
    strict = propagate3d.propagate(SliceOracle(masks), embeddings, (40, 40), masks[4], 4,
                                   propagate3d.GridPoint(0.9, "mask", 0.0))
    assert strict.any(axis=(1, 2)).tolist() == [False, False, True, True, True, True, True, False, False]


def test_after_an_empty_mask_the_walk_goes_on_only_at_threshold_zero():
    """micro-sam's IoU is intersection / (union + 1e-7): 0 after an empty mask, so any threshold > 0 stops
    there; at 0 the reference keeps prompting (from nothing) and keeps what SAM predicts."""
    masks = np.stack([square() for _ in range(5)])
    masks[3] = False
    oracle = SliceOracle(masks)
    out = propagate3d.propagate(oracle, np.arange(5.0)[:, None], (40, 40), masks[2], 2,
                                propagate3d.GridPoint(0.0, "box", 0.0))
    assert out.any(axis=(1, 2)).tolist() == [True, True, True, False, True]
    assert [c[0] for c in oracle.calls] == [1, 0, 3, 4]
    assert oracle.calls[-1][1] is None  # slice 4 was prompted without a box: the previous mask was empty
    strict = SliceOracle(masks)
    out = propagate3d.propagate(strict, np.arange(5.0)[:, None], (40, 40), masks[2], 2,
                                propagate3d.GridPoint(0.5, "box", 0.0))
    assert out.any(axis=(1, 2)).tolist() == [True, True, True, False, False]
    assert [c[0] for c in strict.calls] == [1, 0, 3]
    # an IoU of exactly the threshold stops the walk, as micro-sam's 1e-7 makes it slightly smaller
    half = np.stack([square() for _ in range(3)])
    half[2] = square(x0=8, x1=18)  # IoU with the full square: 200 / 400 = 0.5
    out = propagate3d.propagate(SliceOracle(half), np.arange(3.0)[:, None], (40, 40), half[1], 1,
                                propagate3d.GridPoint(0.5, "box", 0.0))
    assert out.any(axis=(1, 2)).tolist() == [True, True, False]


def test_whole_grid_shares_walks_and_equals_each_point_alone():
    """Hand-built: thresholds share one walk (per projection and extension); results = each point alone."""
    z_count = 9
    target = np.stack([square() for _ in range(z_count)])
    masks = target.copy()
    masks[1] = square(y0=10, y1=30, x0=8, x1=14)  # IoU 0.3 with its predecessor
    masks[7] = square(y0=10, y1=30, x0=8, x1=24)  # IoU 0.8
    embeddings = np.arange(z_count, dtype=float)[:, None]
    points = grid.make_grid([0.5, 0.7, 0.9], ["box", "single_point"], [0.0, 0.1])
    shared = SliceOracle(masks)
    scores = propagate3d.score_grid(shared, embeddings, (40, 40), masks[4], 4, points, target)
    # 4 distinct walks (box and single_point, each at extension 0.0 and 0.1; single_point's crop depends
    # on the extension) of 7 decoder calls each, not 12 points x 7
    assert len(shared.calls) == 4 * 7
    for point, (score, n_slices) in zip(points, scores):
        alone = propagate3d.propagate(SliceOracle(masks), embeddings, (40, 40), masks[4], 4, point)
        assert score == pytest.approx(dice(alone, target)) and n_slices == int(alone.any(axis=(1, 2)).sum())
    # by hand, threshold 0.5: slices 2..8 kept (7 slices), slice 7 is 320 of 400 px:
    # Dice = 2 * (6 * 400 + 320) / (6 * 400 + 320 + 9 * 400)
    assert scores[0] == (pytest.approx(2 * 2720 / (2720 + 3600)), 7)
    # threshold 0.9 stops before slice 7: slices 2..6 (5 slices)
    assert scores[-1] == (pytest.approx(2 * 2000 / (2000 + 3600)), 5)


@pytest.mark.parametrize("rules", ["paper", "v1.8"])
def test_whole_grid_with_a_real_sam_equals_each_point_alone(rules):
    """The shared walks of a tiny random SAM give exactly the reference per-point propagation."""
    from medpipe.interactive.objects import objects_3d, start_slice
    from medpipe.interactive.predictor import BatchedPredictor
    from medpipe.interactive.preprocess import volume
    from medpipe.models.sam import load_model
    from medpipe.models.specs import ModelSpec

    from interactive_fixtures import volume_3d

    image, label = volume_3d(3, (8, 48, 48))
    predictor = BatchedPredictor(load_model(ModelSpec("tiny", "tiny", None), seed=0, device="cpu"))
    embeddings = predictor.encode(volume(image, "reference"))
    points = grid.make_grid([0.5, 0.7, 0.9], list(propagate3d.PROJECTIONS), [0.0, 0.1])
    checked = 0
    for obj in objects_3d(label, {1: "ball", 2: "box"}):
        z = start_slice(obj.mask)
        if z is None:
            continue
        first = predictor.predict(embeddings[z], (48, 48),
                                  boxes=propagate3d.prompts.tight_bbox(obj.mask[z])[None]).masks[0]
        scores = propagate3d.score_grid(predictor, embeddings, (48, 48), first, z, points, obj.mask, rules)
        for point, (score, n_slices) in zip(points, scores):
            alone = propagate3d.propagate(predictor, embeddings, (48, 48), first, z, point, rules)
            assert score == dice(alone, obj.mask), point
            assert n_slices == int(alone.any(axis=(1, 2)).sum()), point
        checked += 1
    assert checked >= 2

def grid_rows(scores):
    """Validation rows: scores[(projection, iou_threshold)] = per-case Dice list."""
    rows = []
    for (projection, threshold), dices in scores.items():
        for i, d in enumerate(dices):
            rows.append({"dataset": "d", "split": "val", "case": f"c{i}", "class_id": 1, "class": "a", "object": 0,
                         "z_start": 2, "start": "box", "iou_threshold": threshold, "projection": projection,
                         "box_extension": 0.0, "dice": d, "n_slices": 3, "seed": 0, "model": "m"})
    return pd.DataFrame(rows)


def test_grid_search_selection():
    val = grid_rows({("box", 0.5): [0.6, 0.6], ("mask", 0.5): [0.9, 0.5], ("mask", 0.8): [0.4, 0.95]})
    chosen = grid.select_setting(val)
    assert chosen[["projection", "iou_threshold"]].values.tolist() == [["mask", 0.5]]
    assert chosen["val_dice"].iloc[0] == pytest.approx(0.7)
    # ties go to the first grid point
    tie = grid.select_setting(grid_rows({("box", 0.5): [0.7, 0.7], ("mask", 0.5): [0.9, 0.5]}))
    assert tie["projection"].tolist() == ["box"]
    # applied to test rows: only the chosen setting, labelled
    test = val.assign(split="test")
    applied = grid.apply_selection(test, chosen)
    assert set(applied["projection"]) == {"mask"} and set(applied["iou_threshold"]) == {0.5}
    assert set(applied["result"]) == {grid.SELECTED_LABEL}
    # the oracle takes each test volume's own best: c0 from mask/0.5 (0.9), c1 from mask/0.8 (0.95)
    oracle = grid.oracle(test)
    assert dict(zip(oracle["case"], oracle["dice"])) == {"c0": 0.9, "c1": 0.95}
    assert oracle["result"].str.startswith("oracle").all()
    with pytest.raises(MissingResultError, match="selected setting"):
        grid.apply_selection(test[test["projection"] == "box"], chosen)
    with pytest.raises(MissingResultError):
        grid.select_setting(val.iloc[:0])
