"""Model building, strict checkpoint loading and SAM input preprocessing."""

import re

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from medpipe.models.names import RANDOM_INIT, checkpoint_label
from medpipe.models.sam import CheckpointError, build_sam
from medpipe.models.transforms import (
    PIXEL_MEAN,
    PIXEL_STD,
    SAM_PIXELS,
    percentile_normalize,
    resize_label,
    sam_input,
    to_sam_uint8,
    to_three_channels,
)


def _pattern(key: str) -> str:
    return re.sub(r"\.blocks\.\d+\.", ".blocks.N.", key)


@pytest.fixture(scope="module")
def vit_b_keys():
    return set(sam_model_registry["vit_b"]().state_dict())


def test_tiny_has_sam_module_tree_and_key_names(vit_b_keys):
    tiny = build_sam("tiny")
    assert isinstance(tiny, Sam)
    keys = set(tiny.state_dict())
    assert keys < vit_b_keys  # same names, fewer ViT blocks
    assert {_pattern(k) for k in keys} == {_pattern(k) for k in vit_b_keys}
    assert tiny.image_encoder.img_size == 256
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000


def test_random_init_label_and_unknown_type():
    assert checkpoint_label(None) == RANDOM_INIT == "random-init"
    assert checkpoint_label("/x/sam.pth") == "/x/sam.pth"
    with pytest.raises(ValueError, match="unknown model type"):
        build_sam("vit_x")


def test_strict_loading_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = build_sam("tiny")
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    loaded = build_sam("tiny", path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    # an extra key (e.g. the semantic decoder in the same file) is refused, naming the file
    state = model.state_dict()
    state["sem_decoder.head.weight"] = torch.zeros(1)
    bad = tmp_path / "extra.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected"):
        build_sam("tiny", bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_sam("tiny", tmp_path / "missing.pth")
    torch.save({"model_state": {}}, tmp_path / "train.pt")
    with pytest.raises(CheckpointError, match="training checkpoint"):
        build_sam("tiny", tmp_path / "train.pt")
    # a vit_b file in a tiny model: shapes/keys mismatch
    with pytest.raises(CheckpointError, match="tiny.pth"):
        build_sam("vit_b", path)


def test_percentile_normalisation():
    image = np.arange(101, dtype=np.float32)  # percentiles 1 and 99 are 1 and 99
    out = percentile_normalize(image)
    assert out[0] == 0 and out[100] == 255
    assert out[50] == pytest.approx(255 * 49 / 98)
    assert percentile_normalize(np.full((4, 4), 7)).max() == 0  # constant image


def test_three_channels_and_uint8():
    grey = np.arange(12).reshape(3, 4)
    three = to_three_channels(grey)
    assert three.shape == (3, 4, 3) and np.all(three[..., 0] == three[..., 2])
    assert to_three_channels(np.zeros((3, 4, 4))).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="channels"):
        to_three_channels(np.zeros((3, 4, 2)))
    assert to_sam_uint8(grey).dtype == np.uint8


def test_sam_input_resizes_longest_side_and_pads():
    image = np.full((50, 100, 3), 255.0, dtype=np.float32)
    tensor = sam_input(image, 256, SAM_PIXELS)
    assert tensor.shape == (3, 256, 256)
    expected = (255 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    assert torch.allclose(tensor[0, :128], torch.full((128, 256), expected), atol=1e-4)  # 50x100 -> 128x256
    assert torch.all(tensor[:, 128:] == 0)  # bottom padding
    label = torch.zeros(50, 100, dtype=torch.int32)
    label[10:20, 30:40] = 7
    resized = resize_label(label, 200)
    assert resized.shape == (100, 200) and set(resized.unique().tolist()) == {0, 7}
    assert int((resized == 7).sum()) == 400
