"""interactive.preprocess: the reference's 1024 x 1024 resize and min-max, or the aspect-keeping percentile rule."""

import numpy as np
import pytest

from medpipe.interactive import preprocess
from medpipe.models.transforms import percentile_normalize, to_three_channels


def test_reference_2d_resizes_to_1024_ignoring_the_aspect_ratio():
    image = np.zeros((4, 8), np.uint16)
    image[:, :4] = 100
    image[:, 4:] = 300
    out = preprocess.image_2d(image, "reference")
    assert out.shape == (1024, 1024, 3) and out.dtype == np.uint8
    assert (out[:, 0] == 0).all() and (out[:, -1] == 255).all()  # min-max of the image: 100 -> 0, 300 -> 255
    assert (out == out[:1]).all()  # constant along the rows: rows are stretched 256x, columns 128x
    label = np.zeros((4, 8), np.uint8)
    label[:, :2] = 1
    label[3, :] = 2
    resized = preprocess.label_2d(label, "reference")
    assert resized.shape == (1024, 1024) and resized.dtype == np.uint8 and set(np.unique(resized)) == {0, 1, 2}
    # nearest neighbour: source column 1 ends at output column 256, source row 2 at output row 768
    assert (resized[:768, :256] == 1).all() and (resized[:768, 256:] == 0).all() and (resized[768:] == 2).all()


def test_reference_2d_min_max_per_channel_then_floor():
    levels = np.array([[0.0, 1.0, 2.0]])  # three grey levels: 0, 127.5 -> 127, 255
    out = preprocess.image_2d(np.repeat(np.repeat(levels, 400, axis=0), 400, axis=1), "reference")
    assert out[0, [100, 512, 950], 0].tolist() == [0, 127, 255]  # inside each block (edges are interpolated)
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = np.linspace(10, 20, 40)[None]
    rgb[..., 1] = np.linspace(100, 200, 40)[None]
    rgb[..., 2] = 50  # constant channel: 0 after its own min-max
    out = preprocess.image_2d(rgb, "reference")
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert out[..., 1].min() == 0 and out[..., 1].max() == 255 and (out[..., 2] == 0).all()


def test_reference_volume_is_scaled_only_above_255():
    small = np.array([[[0.0, 10.7], [200.0, -3.0]]], np.float32)
    assert preprocess.volume(small, "reference")[0, ..., 0].tolist() == [[0, 10], [200, 0]]  # kept (floor; < 0 -> 0)
    ct = np.array([[[-1000, 0], [1000, 1000]]], np.int16)
    out = preprocess.volume(ct, "reference")
    # (x + 1000) / (2000 + 1e-7) x 255 in float32 (the 1e-7 vanishes), floored
    assert out.shape == (1, 2, 2, 3) and out[0, ..., 0].tolist() == [[0, 127], [255, 255]]


def test_aspect_keeps_todays_percentile_rule_and_size():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 30, (30, 50)).astype(np.float32)
    out = preprocess.image_2d(image, "aspect")
    assert np.array_equal(out, np.round(percentile_normalize(to_three_channels(image))).astype(np.uint8))
    label = rng.integers(0, 3, (30, 50))
    assert preprocess.label_2d(label, "aspect") is label or np.array_equal(preprocess.label_2d(label, "aspect"), label)
    volume = rng.normal(0, 1, (3, 10, 12))
    assert np.array_equal(preprocess.volume(volume, "aspect")[..., 0],
                          np.round(percentile_normalize(volume)).astype(np.uint8))
    with pytest.raises(ValueError, match="interactive.preprocess"):
        preprocess.image_2d(image, "stretch")
