"""The shared prompt rules, checked on hand-built masks."""

import numpy as np
import pytest
import torch

from medpipe import prompts


def rect(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_tight_bbox_is_exclusive_xyxy():
    mask = rect((10, 12), 2, 5, 3, 9)  # rows 2..4, cols 3..8
    assert prompts.tight_bbox(mask).tolist() == [3, 2, 9, 5]
    with pytest.raises(ValueError, match="empty"):
        prompts.tight_bbox(np.zeros((4, 4)))


def test_distort_box_stays_within_bounds():
    rng = np.random.default_rng(0)
    box = np.array([20, 10, 60, 30])  # width 40, height 20
    out = np.stack([prompts.distort_box(box, (100, 100), rng, 0.025) for _ in range(500)])
    # each side moves outward by at most 2.5% of its side length, never inward
    assert np.all(out[:, 0] <= 20) and np.all(out[:, 0] >= 20 - 1.0)
    assert np.all(out[:, 2] >= 60) and np.all(out[:, 2] <= 60 + 1.0)
    assert np.all(out[:, 1] <= 10) and np.all(out[:, 1] >= 10 - 0.5)
    assert np.all(out[:, 3] >= 30) and np.all(out[:, 3] <= 30 + 0.5)
    assert out[:, 0].min() < 19.2 and out[:, 2].max() > 60.8  # the range is actually used
    # clipped to the image
    clipped = prompts.distort_box(np.array([0, 0, 100, 50]), (50, 100), rng, 0.5)
    assert clipped.tolist() == [0, 0, 100, 50]
    assert prompts.distort_box(box, (100, 100), rng, 0.0).tolist() == [20, 10, 60, 30]


def test_point_inside_is_uniform_over_object():
    mask = np.zeros((8, 8), bool)
    mask[1, 2] = mask[5, 6] = True
    rng = np.random.default_rng(1)
    draws = [tuple(prompts.sample_point_inside(mask, rng)) for _ in range(400)]
    assert set(draws) == {(2, 1), (6, 5)}  # (x, y)
    assert 150 < sum(d == (2, 1) for d in draws) < 250


def test_center_point_is_distance_transform_maximum():
    mask = rect((11, 11), 2, 9, 1, 8)  # 7x7 square: rows 2..8, cols 1..7 -> centre (4, 5)
    assert prompts.center_point(mask).tolist() == [4, 5]
    # an object touching the border: the border counts as background
    assert prompts.center_point(rect((5, 5), 0, 5, 0, 5)).tolist() == [2, 2]


def test_correction_points_from_fn_and_fp():
    gt = rect((10, 10), 2, 6, 2, 6)
    pred = rect((10, 10), 2, 6, 4, 8)  # FN: cols 2-3, FP: cols 6-7
    rng = np.random.default_rng(0)
    for _ in range(50):
        coords, labels = prompts.correction_points(gt, pred, rng)
        (px, py), (nx, ny) = coords
        assert gt[py, px] and not pred[py, px]
        assert pred[ny, nx] and not gt[ny, nx]
        assert labels.tolist() == [1, 0]


def test_correction_fallbacks():
    rng = np.random.default_rng(0)
    gt = rect((20, 20), 5, 10, 5, 10)
    # perfect prediction: positive from the true positives, negative from the 3 px ring
    for _ in range(50):
        coords, labels = prompts.correction_points(gt, gt.copy(), rng)
        (px, py), (nx, ny) = coords
        assert gt[py, px]
        assert not gt[ny, nx] and 2 <= nx < 13 and 2 <= ny < 13
        assert labels.tolist() == [1, 0]
    # ring empty (object fills the image except a far corner): any background pixel
    gt2 = np.ones((20, 20), bool)
    gt2[0, 0] = False
    gt2[:, 0] = True
    gt2[0, :] = True
    gt2[19, 19] = False
    coords, labels = prompts.correction_points(gt2, gt2.copy(), rng)
    assert coords[1].tolist() == [19, 19] and labels.tolist() == [1, 0]
    # object covers the whole image: no negative point, label -1
    full = np.ones((4, 4), bool)
    coords, labels = prompts.correction_points(full, full, rng)
    assert labels.tolist() == [1, prompts.NO_POINT]
    with pytest.raises(ValueError, match="empty"):
        prompts.correction_points(np.zeros((4, 4)), full, rng)
    with pytest.raises(ValueError, match="shape"):
        prompts.correction_points(full, np.ones((3, 3)), rng)


def test_bbox_ring_clipped_at_border():
    gt = rect((6, 6), 0, 2, 0, 2)
    ring = prompts.bbox_ring(gt)
    assert ring.sum() == 25 - 4  # 5x5 grown box clipped at the top-left, minus the 2x2 object


def test_initial_prompts_and_accumulation():
    rng = np.random.default_rng(3)
    masks = np.stack([rect((16, 16), 2, 6, 2, 6), rect((16, 16), 8, 14, 9, 15)])
    box = prompts.initial_prompts(masks, rng, use_box=True, box_distortion=0.0)
    assert box["boxes"].tolist() == [[2, 2, 6, 6], [9, 8, 15, 14]] and box["points"] is None
    assert not prompts.uses_multimask(box)
    pts = prompts.initial_prompts(masks, rng, use_box=False)
    assert pts["points"].shape == (2, 1, 2) and pts["labels"].tolist() == [[1], [1]]
    for m, (x, y) in zip(masks, pts["points"][:, 0]):
        assert m[y, x]
    assert prompts.uses_multimask(pts)
    centre = prompts.initial_prompts(masks, rng, use_box=False, center=True)
    assert centre["points"][0, 0].tolist() == [3, 3]  # first of the 4 tied central pixels
    more = prompts.add_correction_points(box, masks, np.zeros_like(masks), rng)
    assert more["points"].shape == (2, 2, 2) and more["boxes"] is box["boxes"]
    more = prompts.add_correction_points(more, masks, np.zeros_like(masks), rng)
    assert more["points"].shape == (2, 4, 2) and more["labels"][:, ::2].tolist() == [[1, 1], [1, 1]]
    assert not prompts.uses_multimask(more)
    points, boxes = prompts.as_torch_prompts(more, "cpu")
    assert points[0].dtype == torch.float32 and points[1].shape == (2, 4) and boxes.shape == (2, 4)


def test_select_best_by_predicted_iou_and_mask_prompts():
    masks = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.1]])
    best, index = prompts.select_best(masks, iou)
    assert index.tolist() == [1, 0]
    assert torch.equal(best[:, 0], torch.stack([masks[0, 1], masks[1, 0]]))
    assert prompts.empty_mask_prompt(3, (4, 4)).shape == (3, 1, 4, 4)
    logits = torch.ones(1, 1, 2, 2, requires_grad=True)
    assert not prompts.mask_prompt_from(logits).requires_grad
