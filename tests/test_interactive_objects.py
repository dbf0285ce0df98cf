"""Objects of the interactive protocols: components, size filter, start slice, prompts."""

import numpy as np
import pytest

from medpipe import prompts
from medpipe.interactive import objects


def test_components_per_class_with_20px_filter():
    label = np.zeros((30, 30), np.uint8)
    label[0:5, 0:5] = 1  # 25 px -> kept, object 0 of class 1
    label[10:14, 10:14] = 1  # 16 px -> dropped
    label[20:25, 20:24] = 1  # 20 px -> kept (>= 20), object 1
    label[0:5, 20:25] = 2  # 25 px, class 2
    found = objects.connected_objects(label, {1: "a", 2: "b"})
    assert [(o.class_id, o.class_name, o.index, int(o.mask.sum())) for o in found] == [
        (1, "a", 0, 25), (1, "a", 1, 20), (2, "b", 0, 25)]
    assert found[1].mask[20:25, 20:24].all()
    with pytest.raises(ValueError, match="do not declare|does not declare"):
        objects.connected_objects(label, {1: "a"})


def test_centre_point_is_distance_transform_maximum():
    mask = np.zeros((20, 30), bool)
    mask[2:18, 2:10] = True  # thin bar: centre column 5 or 6
    mask[5:16, 12:28] = True  # 11 x 16 block: the deepest point lies in it
    x, y = prompts.center_point(mask)
    assert 12 + 5 <= x <= 28 - 6 and 5 + 5 <= y <= 16 - 6
    assert (x, y) == (17, 10)  # first maximum in row-major order


def test_start_slice_is_middle_of_z_extent_and_skips_small():
    vol = np.zeros((10, 8, 8), bool)
    vol[2:7, 2:6, 2:6] = True  # z 2..6 -> middle 4, 16 px there
    assert objects.start_slice(vol) == 4
    vol2 = np.zeros((10, 8, 8), bool)
    vol2[1, 0:4, 0:4] = True
    vol2[7, 0:4, 0:4] = True  # middle slice 4 is empty -> skipped
    assert objects.start_slice(vol2) is None
    vol3 = np.zeros((5, 8, 8), bool)
    vol3[2, 0:3, 0:3] = True  # 9 px < 10 -> skipped
    assert objects.start_slice(vol3) is None


def test_ring_negative_lies_in_ring_and_positive_inside():
    mask = np.zeros((60, 60), bool)
    mask[25:35, 25:35] = True
    ring = objects.ring(mask, width=10)
    assert not (ring & mask).any()
    assert ring[15, 30] and ring[30, 44] and not ring[14, 30] and not ring[30, 45]
    rng = np.random.default_rng(0)
    for _ in range(50):
        coords, labels = objects.ring_point_prompt(mask, rng)
        (px, py), (nx, ny) = coords
        assert labels.tolist() == [1, 0]
        assert mask[py, px] and ring[ny, nx]
    full = np.ones((8, 8), bool)
    coords, labels = objects.ring_point_prompt(full, rng)
    assert labels.tolist() == [1, -1]


def test_correction_points_come_from_error_regions():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    pred = np.zeros((20, 20), bool)
    pred[5:15, 10:18] = True  # misses cols 5..9 (FN), spills into cols 15..17 (FP)
    rng = np.random.default_rng(3)
    for _ in range(30):
        coords, labels = prompts.correction_points(gt, pred, rng)
        (px, py), (nx, ny) = coords
        assert labels.tolist() == [1, 0]
        assert gt[py, px] and not pred[py, px]
        assert pred[ny, nx] and not gt[ny, nx]
