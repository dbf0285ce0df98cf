"""Patch sampling, the common training loop, whole-case prediction, Dice tables and prediction files."""

import argparse
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from imageio import v3 as iio

from medpipe.models.swin_unetr import padded_size
from medpipe.models.transforms import SAM_PIXELS
from medpipe.semantic.command import run_semantic_run as run_command
from medpipe.semantic.data import PatchSampler, SplitError, read_split
from medpipe.semantic.evaluate import dice_rows, write_prediction
from medpipe.semantic.preprocess import (
    channels_first,
    intensity_range,
    labels_to_sam,
    restore_logits,
    scale_intensity,
    to_sam_batch,
)
from medpipe.semantic.run import Backbone, run_torch
from medpipe.store import DatasetStore

from semantic_fixtures import TINY_SEMANTIC, make_semantic_data, write_semantic_config


def schema_defaults(method: str) -> dict:
    """A method's settings as the schema's defaults give them (the tests override the sizes)."""
    from medpipe.config import schema

    properties = schema()["properties"]["semantic"]["properties"][method]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_semantic_data(tmp_path_factory.mktemp("sem"))


def test_read_split_checks_cases_and_parts(data, tmp_path):
    store = DatasetStore(data["store2d"])
    split = read_split(data["split2d"], "sem2d", store)
    assert split == {"train": ["p0_img", "p1_img", "p2_img"], "val": ["p3_img"], "test": ["p4_img", "p5_img"]}
    bad = tmp_path / "bad.tsv"
    bad.write_text("dataset\tcase_id\tpatient_id\tmodality\tsplit\nsem2d\tnope\tp\tx\ttrain\n")
    with pytest.raises(SplitError, match=r"bad.tsv: cases not in store .*\['nope'\]"):
        read_split(bad, "sem2d", store)
    bad.write_text("dataset\tcase_id\tpatient_id\tmodality\tsplit\nsem2d\tp0_img\tp\tx\ttrain\n")
    with pytest.raises(SplitError, match="has no test cases"):
        read_split(bad, "sem2d", store)


def test_patch_sampler_is_seeded_padded_and_scaled(data):
    store = DatasetStore(data["store3d"])

    def draw():
        return PatchSampler(store, ["v0_vol", "v1_vol"], (10, 32, 32), np.random.default_rng(3)).batch(3)

    images, labels = draw()
    again_images, again_labels = draw()
    assert all(np.array_equal(a, b) for a, b in zip(images, again_images))
    assert images[0].shape == labels[0].shape == (10, 32, 32)  # 8 slices zero-padded to 10
    assert np.all(labels[0][8:] == 0) and np.all(images[0][8:] == 0)
    assert images[0].dtype == np.float32 and 0 <= images[0].min() and images[0].max() <= 255
    sampler = PatchSampler(store, ["v0_vol"], (4, 16, 16), np.random.default_rng(0), fg_prob=1.0)
    assert all((sampler.sample()[1] > 0).any() for _ in range(5))  # foreground-centred patches
    with pytest.raises(ValueError, match="needs 3 axes"):
        PatchSampler(store, ["v0_vol"], (16, 16), np.random.default_rng(0))


def test_intensity_scaling_by_hand():
    assert np.allclose(scale_intensity(np.array([-10, 0, 50, 100, 200]), 0, 100), [0, 0, 127.5, 255, 255])
    assert np.all(scale_intensity(np.full(4, 7), 7, 7) == 0)  # a constant case
    lo, hi = intensity_range(np.arange(101))
    assert (lo, hi) == (1.0, 99.0)


def test_sam_geometry_of_batches_and_channels():
    grey = torch.full((2, 1, 32, 64), 255.0)
    x = to_sam_batch(grey, 64, SAM_PIXELS)
    assert x.shape == (2, 3, 64, 64)
    assert torch.all(x[:, :, 32:] == 0)  # bottom padding (after normalisation) is zero
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor((255 - 123.675) / 58.395))
    labels = labels_to_sam(torch.tensor([[[0, 1], [2, 2]]]), 4)
    assert labels.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]]
    assert channels_first(np.zeros((5, 6, 3)), 2).shape == (3, 5, 6)
    assert channels_first(np.zeros((4, 5, 6)), 3).shape == (1, 4, 5, 6)
    with pytest.raises(ValueError, match="not a 3D grey"):
        channels_first(np.zeros((5, 6)), 3)
    assert [padded_size(n) for n in (1, 40, 64, 65, 96)] == [64, 64, 64, 96, 96]


def test_restore_logits_crops_padding_and_resizes():
    logits = torch.zeros(1, 2, 64, 64)
    logits[:, 1, :32, :] = 1.0  # a 40x80 image resized to 32x64 occupies the top half
    out = restore_logits(logits, (40, 80), 64)
    assert out.shape == (1, 2, 40, 80)
    assert torch.allclose(out[:, 1], torch.ones(1, 40, 80)) and torch.allclose(out[:, 0], torch.zeros(1, 40, 80))


def test_dice_rows_on_known_masks():
    target = np.zeros((4, 4), np.uint8)
    target[:2, :2] = 1  # class 1: 4 px; class 2 absent
    prediction = np.zeros((4, 4), np.uint8)
    prediction[:2, :1] = 1  # 2 px, all inside
    prediction[3, 3] = 3  # class 3 predicted, absent in target
    rows = dice_rows("c", prediction, target, {1: "a", 2: "b", 3: "c"}, method="m", seed=0)
    by_class = {r["class_id"]: r["dice"] for r in rows}
    assert by_class[1] == pytest.approx(2 * 2 / (2 + 4))
    assert np.isnan(by_class[2])
    assert np.isnan(by_class[3])  # no ground truth for class 3: skipped as in the reference, not scored 0
    assert rows[0]["method"] == "m" and rows[0]["case_id"] == "c" and rows[0]["class_name"] == "a"


def test_reference_semantic_loss_by_hand():
    """medico-sam's CustomCombinedLoss on sigmoid outputs: softmax of the outputs, one-hot target,
    batch-pooled Dice summed over all channels (background too) x 0.5 + CE on the outputs as logits x 0.5."""
    import math

    from medpipe.losses import reference_dice_metric, reference_semantic_loss

    outputs = torch.tensor([0.2, 0.9]).view(1, 2, 1, 1)  # one pixel, two classes, label 1
    labels = torch.ones(1, 1, 1, 1, dtype=torch.int64)
    p1 = 1 / (1 + math.exp(-0.7))  # softmax of (0.2, 0.9) for class 1
    dice = (1 - 0.0) + (1 - 2 * p1 / (p1 * p1 + 1))  # background: no overlap; class 1
    ce = -math.log(p1)
    assert reference_dice_metric(outputs, labels).item() == pytest.approx(dice, rel=1e-6)
    assert reference_semantic_loss(outputs, labels).item() == pytest.approx(0.5 * dice + 0.5 * ce, rel=1e-6)
    # the Dice pools the batch: two images of one pixel each are one pool per channel
    two = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    labels2 = torch.tensor([1, 1]).view(2, 1, 1, 1)
    q = 1 / (1 + math.exp(-1.0))  # softmax probability of the larger output
    # background: no target pixel -> loss 1; class 1: sum(p g) = q + (1 - q) = 1 over both images
    pooled = 1 + (1 - 2 * 1 / (q**2 + (1 - q) ** 2 + 2))
    assert reference_dice_metric(two, labels2).item() == pytest.approx(pooled, rel=1e-6)


def test_plateau_schedule_of_the_sam_methods_is_the_reference_factor():
    from medpipe.semantic.train import TrainSettings, fit

    for method in ("sam_unetr", "ma_sam"):
        defaults = schema_defaults(method)
        assert defaults["plateau_factor"] == 0.9 and defaults["plateau_patience"] == 10
        assert defaults["loss"] == "reference"
    assert schema_defaults("sam_unetr")["image_prep"] == "resize"
    # a model that cannot improve: with patience 0 every validation after the first multiplies lr by 0.9
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Sigmoid())
    x, y = torch.randn(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    settings = TrainSettings(iterations=4, batch_size=2, lr=1e-12, val_every=1, plateau_patience=0,
                             plateau_factor=schema_defaults("sam_unetr")["plateau_factor"], loss="reference")
    history = fit(model, lambda: (x, y), [(x, y)], settings)
    assert [lr for _, _, lr in history["val"]] == pytest.approx([1e-12, 0.9e-12, 0.81e-12, 0.729e-12])


def test_sam_unetr_sees_whole_images_centred_in_training_and_sam_padded_at_test(data):
    from medpipe.models.transforms import PIXEL_MEAN, PIXEL_STD
    from medpipe.semantic.preprocess import whole_images_to_sam, whole_labels_to_sam

    image = np.full((1, 20, 40), 255.0, np.float32)  # 20 x 40 -> 32 x 64 in a 64 px input
    x = whole_images_to_sam([image], 64, SAM_PIXELS)
    raw = x[0, 0] * PIXEL_STD[0] + PIXEL_MEAN[0]
    assert torch.allclose(raw[16:48], torch.tensor(255.0)) and torch.allclose(raw[:16], torch.tensor(0.0), atol=1e-4)
    assert torch.allclose(raw[48:], torch.tensor(0.0), atol=1e-4)  # centred: 16 rows above, 16 below
    label = np.zeros((20, 40), np.int64)
    label[:10] = 2
    y = whole_labels_to_sam([label], 64)
    assert y.shape == (1, 1, 64, 64) and set(y[0, 0, 16:32].unique().tolist()) == {2}
    assert set(y[0, 0, 32:48].unique().tolist()) == {0}
    # a training run: whole images, sigmoid outputs; predictions of whole cases at their own size
    store = DatasetStore(data["store2d"])
    split = read_split(data["split2d"], store.name, store)
    settings = {**schema_defaults("sam_unetr"), **TINY_SEMANTIC["sam_unetr"], "iterations": 2, "val_every": 2}
    predictions, record = run_torch("sam_unetr", settings, store, split, 0, Backbone("t", "tiny", None, "random", None),
                                    "cpu")
    assert all(p.shape == store.label(c).shape for c, p in predictions.items())
    from medpipe.semantic.run import build_torch_method

    method = build_torch_method("sam_unetr", settings, store, split["train"][0], Backbone("t", "tiny"), "cpu")
    assert method.whole_images and method.activation == "sigmoid"
    batch_x, batch_y = method.to_batch([np.zeros((30, 60), np.float32)], [np.ones((30, 60), np.int64)])
    assert batch_x.shape == (1, 3, 256, 256) and batch_y.shape == (1, 1, 256, 256)
    assert batch_y[0, 0, :64].sum() == 0 and batch_y[0, 0, 64:192].all()  # 128 rows of image, centred


def test_predictions_are_written_as_nifti_and_png(tmp_path):
    volume = np.zeros((3, 4, 5), np.uint16)
    volume[1, 2, 3] = 2
    path = write_prediction(volume, (2.5, 1.0, 0.5), tmp_path, "case")
    img = nib.load(path)
    assert path.name == "case.nii.gz" and img.shape == (5, 4, 3)
    assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), volume)
    assert np.allclose(img.header.get_zooms(), (0.5, 1.0, 2.5))
    png = write_prediction(volume[1], (1.0, 1.0), tmp_path, "slice")
    assert png.name == "slice.png" and np.array_equal(iio.imread(png), volume[1])


@pytest.mark.parametrize("method,ndim", [("sam_unetr", 2), ("ma_sam", 3), ("swin_unetr", 2)])
def test_tiny_training_lowers_the_loss_and_predicts_case_shapes(data, method, ndim):
    store = DatasetStore(data[f"store{ndim}d"])
    split = read_split(data[f"split{ndim}d"], store.name, store)
    backbone = Backbone("sam_tiny", "tiny", None, "random", None)
    settings = {**schema_defaults(method), **TINY_SEMANTIC[method]}
    predictions, record = run_torch(method, settings, store, split, 0, backbone, "cpu")
    losses = [loss for _, loss in record["history"]["train"]]
    assert len(losses) == settings["iterations"]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [it for it, *_ in record["history"]["val"]] == [6, 12]
    assert sorted(predictions) == split["test"]
    for case_id, prediction in predictions.items():
        assert prediction.shape == store.label(case_id).shape
        assert set(np.unique(prediction)) <= {0, 1, 2}


def test_semantic_run_writes_table_predictions_and_record(data, tmp_path):
    config = write_semantic_config(tmp_path, sam_unetr={**TINY_SEMANTIC["sam_unetr"], "iterations": 2, "val_every": 2})
    args = argparse.Namespace(config=str(config), method="sam_unetr", dataset="sem2d", store=str(data["store2d"]),
                              split=str(data["split2d"]), seed=0, backbone="sam_tiny", model_type="tiny",
                              checkpoint=None, decoder_init="random", decoder_file=None,
                              table=str(tmp_path / "t.tsv"), pred_dir=str(tmp_path / "pred"), work_dir=None,
                              device="cpu")
    assert run_command(args) == 0
    frame = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(frame.columns) == ["method", "backbone", "decoder_init", "dataset", "seed", "case_id", "class_id",
                                   "class_name", "dice"]
    assert len(frame) == 4 and set(frame.backbone) == {"sam_tiny"}  # 2 test cases x 2 classes
    assert (tmp_path / "pred" / "p4_img.png").is_file() and (tmp_path / "pred" / "p5_img.png").is_file()
    record = json.loads((tmp_path / "pred" / "training.json").read_text())
    assert record["settings"]["iterations"] == 2 and record["parameters"] > 0
    args.method, args.store, args.split, args.dataset = "ma_sam", str(data["store2d"]), str(data["split2d"]), "sem2d"
    with pytest.raises(ValueError, match="ma_sam is the 3D method"):
        run_command(args)


@pytest.mark.parametrize("method,ndim", [("sam_unetr", 2), ("ma_sam", 3), ("swin_unetr", 2)])
def test_killed_training_resumes_to_the_weights_of_an_uninterrupted_run(data, method, ndim, tmp_path):
    """State at every validation; a run killed between two (nothing saved then) reruns to the same weights."""
    from medpipe.semantic.train import Interrupted

    store = DatasetStore(data[f"store{ndim}d"])
    split = read_split(data[f"split{ndim}d"], store.name, store)
    backbone = Backbone("sam_tiny", "tiny", None, "random", None)
    settings = {**schema_defaults(method), **TINY_SEMANTIC[method], "iterations": 5, "val_every": 2}

    def weights(state_path, stop_after=None):
        _, record = run_torch(method, settings, store, split, 0, backbone, "cpu", state_path=state_path,
                              stop_after=stop_after)
        return record

    plain = weights(tmp_path / "plain.pt")  # uninterrupted (keeps states on the way)
    assert not (tmp_path / "plain.pt").exists()  # removed once training completed
    with pytest.raises(Interrupted):
        weights(tmp_path / "state.pt", stop_after=3)  # killed after iteration 3; the state is from iteration 2
    assert torch.load(tmp_path / "state.pt", weights_only=False)["iteration"] == 2
    resumed = weights(tmp_path / "state.pt")
    assert resumed["history"] == plain["history"]  # every loss, validation metric and LR, exactly
    assert resumed["parameters"] == plain["parameters"]


def test_sigterm_checkpoints_and_exits_143(data, tmp_path, monkeypatch):
    """SLURM's --signal lead time: SIGTERM during iteration 2 -> state of iteration 2 written, exit 143."""
    import contextlib
    import os
    import signal

    from medpipe.semantic import train as semantic_train

    store = DatasetStore(data["store2d"])
    split = read_split(data["split2d"], store.name, store)
    settings = {**schema_defaults("swin_unetr"), **TINY_SEMANTIC["swin_unetr"], "iterations": 5, "val_every": 4}
    forwards = []

    class SignalOnSecondForward(contextlib.AbstractContextManager):  # the autocast context of each forward
        def __enter__(self):
            forwards.append(1)
            if len(forwards) == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(semantic_train, "autocast_for", lambda device: SignalOnSecondForward())
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        run_torch("swin_unetr", settings, store, split, 0, Backbone(), "cpu", state_path=tmp_path / "s.pt")
    assert info.value.code == 143
    assert torch.load(tmp_path / "s.pt", weights_only=False)["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is handler  # the handler is put back


def test_prefetched_batches_are_those_of_a_plain_loop_with_their_generator_states():
    from medpipe.semantic.train import BatchPrefetcher, prefetch_depth

    plain_rng, rng = np.random.default_rng(5), np.random.default_rng(5)
    plain = []
    for _ in range(6):
        plain.append((plain_rng.integers(100, size=3), plain_rng.bit_generator.state))
    loader = BatchPrefetcher(lambda: rng.integers(100, size=3), rng, 6, depth=3)
    try:
        for batch, state in plain:
            got, got_state = loader.get()
            assert np.array_equal(got, batch) and got_state == state  # the state right after this batch
    finally:
        loader.close()
    assert [prefetch_depth(c) for c in (1, 2, 8, 64)] == [1, 1, 4, 4]

    def broken():
        raise ValueError("bad case")

    failing = BatchPrefetcher(broken, None, 2, depth=1)
    with pytest.raises(ValueError, match="bad case"):
        failing.get()
    failing.close()
