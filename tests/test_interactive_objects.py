"""Objects of the interactive protocols: components, size filter, start slice, prompts."""

import numpy as np
import pytest
from scipy import ndimage

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


def test_a_one_pixel_diagonal_vessel_stays_one_object():
    """8-connected components (the reference's skimage default): a 4-connected labelling would cut this
    1-px diagonal line into single pixels, all below the 20 px filter, and the vessel would vanish."""
    label = np.zeros((300, 300), np.uint8)
    for i in range(259):
        label[20 + i, 10 + i] = 1
    found = objects.connected_objects(label, {1: "vessel"})
    assert len(found) == 1 and int(found[0].mask.sum()) == 259
    blobs = np.zeros((10, 10), np.uint8)
    blobs[0:5, 0:5] = 1
    blobs[5:10, 5:10] = 1  # touches the first block at one corner only: one 8-connected object of 50 px
    assert [int(o.mask.sum()) for o in objects.connected_objects(blobs, {1: "a"})] == [50]


def test_centre_point_is_farthest_from_the_inner_boundary():
    """micro-sam's centre: the maximum distance to the object's inner boundary (not to the background)."""
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:8] = True
    mask[1:10, 1:6] = True  # an L: rows 1-5 x cols 1-7 plus rows 6-9 x cols 1-5
    # (3, 3) is 2 px from the boundary rows/cols 1; (4, 4) is 3 px from them and sqrt(5) px from the boundary
    # pixels (6, 5) and (5, 6) of the inner corner: the maximum. (The distance to the background would
    # pick (3, 3) at 3 px.)
    assert prompts.center_point(mask).tolist() == [4, 4]
    two = np.zeros((12, 24), int)
    two[:, :12] = mask
    two[:, 12:] = mask * 2
    centres = prompts.center_points(two)
    assert centres[1].tolist() == [4, 4] and centres[2].tolist() == [16, 4]


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


def test_point_start_negative_is_more_than_10_px_away_inside_the_grown_bbox():
    """micro-sam PointAndBoxPromptGenerator(dilation_strength=10): bbox + 10 px minus the object dilated
    10 times with a 3x3 square, i.e. Chebyshev distance > 10; everything else of the slice as fallback."""
    mask = np.zeros((80, 80), bool)
    mask[30:50, 30:34] = True
    mask[46:50, 30:50] = True  # an L: the grown bbox's far corner is > 10 px from every object pixel
    chebyshev = ndimage.distance_transform_cdt(~mask, metric="chessboard")
    region = objects.negative_region(mask)
    assert region.any() and (chebyshev[region] > 10).all()
    rows, cols = np.nonzero(region)
    assert rows.min() >= 20 and rows.max() < 60 and cols.min() >= 20 and cols.max() < 60  # bbox (30..50) + 10
    expected = np.zeros_like(mask)
    expected[20:60, 20:60] = True
    assert np.array_equal(region, expected & (chebyshev > 10))
    rng = np.random.default_rng(0)
    for _ in range(30):
        coords, labels = objects.point_start_prompt(mask, rng)
        (px, py), (nx, ny) = coords
        assert labels.tolist() == [1, 0] and mask[py, px] and region[ny, nx]
    # a rectangle's grown bbox is exactly its 10x dilation: no candidate, any background pixel instead
    square = np.zeros((60, 60), bool)
    square[25:35, 25:35] = True
    assert not objects.negative_region(square).any()
    negatives = np.array([objects.point_start_prompt(square, rng)[0][1] for _ in range(200)])
    assert not square[negatives[:, 1], negatives[:, 0]].any()
    assert (np.abs(negatives - 30).max(axis=1) > 15).any()  # also far outside the grown bbox
    coords, labels = objects.point_start_prompt(np.ones((8, 8), bool), rng)
    assert labels.tolist() == [1, -1]


def test_first_component_of_the_start_slice_prediction():
    mask = np.zeros((10, 10), bool)
    mask[6:9, 6:9] = True
    mask[1:3, 1:3] = True  # the first pixel in raster order is here
    mask[3, 3] = True  # touches (2, 2) diagonally
    eight = objects.first_component(mask)
    assert eight.sum() == 5 and eight[3, 3] and not eight[7, 7]
    four = objects.first_component(mask, connectivity=1)
    assert four.sum() == 4 and not four[3, 3]
    assert not objects.first_component(np.zeros((4, 4), bool)).any()


def test_3d_objects_are_label_ids_unless_a_class_is_split_into_components():
    label = np.zeros((6, 20, 20), np.uint8)
    label[1:3, 2:6, 2:6] = 1
    label[3:5, 12:16, 12:16] = 1  # a second, separate piece of class 1
    label[1:4, 10:12, 2:4] = 2
    label[4, 12, 4] = 2  # touches (3, 11, 3) only through a corner: 26-connected
    classes = {1: "kidney", 2: "tumor"}
    default = objects.objects_3d(label, classes)
    assert [(o.class_name, o.index, int(o.mask.sum())) for o in default] == [("kidney", 0, 64), ("tumor", 0, 13)]
    split = objects.objects_3d(label, classes, components=("kidney", "tumor"))
    assert [(o.class_name, o.index, int(o.mask.sum())) for o in split] == [
        ("kidney", 0, 32), ("kidney", 1, 32), ("tumor", 0, 13)]
    only = objects.objects_3d(label, classes, evaluated=("tumor",), components=("tumor",))
    assert [(o.class_name, int(o.mask.sum())) for o in only] == [("tumor", 13)]
    with pytest.raises(ValueError, match="not class names"):
        objects.objects_3d(label, classes, components=("liver",))


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
