"""The device prompt sampler draws from the same distributions as the numpy rules, with the same fallbacks."""

import numpy as np
import pytest
import torch

from medpipe import prompts as P

DRAWS = 4000


def _numpy_counts(draw, shape) -> np.ndarray:
    counts = np.zeros(shape, np.int64)
    rng = np.random.default_rng(0)
    for _ in range(DRAWS):
        x, y = draw(rng)
        counts[y, x] += 1
    return counts


def _device_counts(coords: torch.Tensor, shape) -> np.ndarray:
    counts = np.zeros(shape, np.int64)
    np.add.at(counts, (coords[:, 1].numpy(), coords[:, 0].numpy()), 1)
    return counts


def _assert_same_uniform(device: np.ndarray, reference: np.ndarray, region: np.ndarray):
    """Same support (the region) and frequencies within 5 sigma of uniform for both samplers."""
    assert np.array_equal(device > 0, region) and np.array_equal(reference > 0, region)
    p = 1 / region.sum()
    sigma = np.sqrt(DRAWS * p * (1 - p))
    for counts in (device, reference):
        assert np.abs(counts[region] - DRAWS * p).max() < 5 * sigma


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_uniform_point_inside_matches_numpy_sampler():
    mask = np.zeros((9, 11), bool)
    mask[2:5, 3:7] = True
    mask[7, 9] = True  # a second component: uniform over all object pixels
    stack = torch.from_numpy(np.repeat(mask[None], DRAWS, 0))
    u = torch.rand((DRAWS, 4), generator=_gen(), dtype=torch.float64)
    prompt = P.initial_prompts_device(stack, u, use_box=False)
    assert prompt["points"].shape == (DRAWS, 1, 2) and prompt["labels"].unique().tolist() == [1]
    device = _device_counts(prompt["points"][:, 0].long(), mask.shape)
    reference = _numpy_counts(lambda rng: P.sample_point_inside(mask, rng), mask.shape)
    _assert_same_uniform(device, reference, mask)


@pytest.mark.parametrize("case", ["errors", "no-false-positive", "exact", "fills-image"])
def test_correction_points_match_numpy_rules_and_fallbacks(case):
    gt = np.zeros((12, 12), bool)
    gt[3:8, 4:9] = True
    pred = np.zeros_like(gt)
    if case == "errors":  # false negatives and false positives
        pred[5:10, 6:11] = True
        pos_region, neg_region = gt & ~pred, pred & ~gt
    elif case == "no-false-positive":  # prediction inside the object: negatives from the 3 px bbox ring
        pred[4:6, 5:7] = True
        pos_region, neg_region = gt & ~pred, P.bbox_ring(gt)
    elif case == "exact":  # nothing to correct: positives from the true positives, negatives from the ring
        pred = gt.copy()
        pos_region, neg_region = gt, P.bbox_ring(gt)
    else:  # the object fills the image: no negative point (label -1 at (0, 0))
        gt[:] = True
        pred = gt.copy()
        pos_region, neg_region = gt, None
    stack = lambda a: torch.from_numpy(np.repeat(a[None], DRAWS, 0))  # noqa: E731
    u = torch.rand((DRAWS, 2), generator=_gen(1), dtype=torch.float64)
    coords, labels = P.correction_points_device(stack(gt), stack(pred), u)
    assert coords.shape == (DRAWS, 2, 2) and coords.dtype == torch.int64
    ref = [P.correction_points(gt, pred, rng) for rng in [np.random.default_rng(s) for s in range(300)]]
    assert labels[:, 0].unique().tolist() == [1]
    if neg_region is None:
        assert labels[:, 1].unique().tolist() == [P.NO_POINT] and coords[:, 1].abs().sum() == 0
        assert all(lab[1] == P.NO_POINT for _, lab in ref)
    else:
        assert labels[:, 1].unique().tolist() == [0] and all(lab[1] == 0 for _, lab in ref)
        reference = _numpy_counts(lambda rng: P.correction_points(gt, pred, rng)[0][1], gt.shape)
        _assert_same_uniform(_device_counts(coords[:, 1], gt.shape), reference, neg_region)
    reference = _numpy_counts(lambda rng: P.correction_points(gt, pred, rng)[0][0], gt.shape)
    _assert_same_uniform(_device_counts(coords[:, 0], gt.shape), reference, pos_region)


def test_background_fallback_when_the_ring_is_empty():
    gt = np.zeros((6, 6), bool)
    gt[:, :5] = True  # touches three borders; the grown bbox covers the whole image
    gt[0, 5] = True
    pred = gt.copy()
    coords, labels = P.correction_points_device(torch.from_numpy(gt)[None], torch.from_numpy(pred)[None],
                                                torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    assert labels.tolist() == [[1, 0]]
    x, y = coords[0, 1].tolist()
    assert not gt[y, x]  # the background pixels left: (5, 1) .. (5, 5)


def test_boxes_tight_and_distorted_like_numpy():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 0:20, 0:30] = True  # whole image: distortion clipped to it
    masks[2, 15, 29] = True
    tight = P.tight_bboxes(torch.from_numpy(masks))
    assert tight.tolist() == [P.tight_bbox(m).tolist() for m in masks]
    none = P.initial_prompts_device(torch.from_numpy(masks), torch.zeros(3, 4, dtype=torch.float64), use_box=True,
                                    box_distortion=0.025)
    assert none["boxes"].tolist() == tight.float().tolist() and none["points"] is None
    top = P.initial_prompts_device(torch.from_numpy(masks), torch.full((3, 4), 0.999999, dtype=torch.float64),
                                   use_box=True, box_distortion=0.5)
    # each side pushed out by u x factor x side, clipped to the image, as distort_box
    expected = [P.distort_box(P.tight_bbox(m), m.shape, _ConstantRng(0.999999 * 0.5), 1.0) for m in masks]
    torch.testing.assert_close(top["boxes"], torch.tensor(np.stack(expected), dtype=torch.float32))


class _ConstantRng:
    def __init__(self, value):
        self.value = value

    def uniform(self, low, high, size):
        return np.full(size, self.value * (high - low) + low)


def test_generators_are_seeded_from_the_images_numpy_generators():
    a = P.device_generators([np.random.default_rng([5, 3, 7])], "cpu")[0]
    b = P.device_generators([np.random.default_rng([5, 3, 7])], "cpu")[0]
    c = P.device_generators([np.random.default_rng([5, 3, 8])], "cpu")[0]
    draw = lambda g: torch.rand(4, generator=g, dtype=torch.float64).tolist()  # noqa: E731
    first = draw(a)
    assert first == draw(b) and first != draw(c)
