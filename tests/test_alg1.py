"""Every rule of Alg. 1 on hand-built inputs: losses, the iteration's structure, sampling, presets."""

import numpy as np
import pytest
import torch

from medpipe.finetune import objective as O
from medpipe.finetune.data import IterationBatches, collate, instances_from_semantic, make_sample
from medpipe.finetune.trainer import iteration_draws, lr_factor
from medpipe.losses import pooled_dice_loss
from medpipe.models.transforms import SAM_PIXELS
from medpipe.run_settings import PRESETS, SettingsError, fingerprint, resolve_run


def test_dice_loss_hand_computed():
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    half = torch.full((1, 1, 2, 2), 0.5)
    # 1 - 2 * (0.5 + 0.5) / (4 * 0.25 + 2) = 1 - 2/3
    assert O.dice_loss(half, target).item() == pytest.approx(1 / 3)
    assert O.dice_loss(target, target).item() == pytest.approx(0.0)
    assert O.dice_loss(1 - target, target).item() == pytest.approx(1.0)


def test_mask_iou_hand_computed():
    pred = torch.tensor([[[[1, 1], [1, 0]]]], dtype=torch.bool)
    target = torch.tensor([[[[1, 0], [1, 1]]]], dtype=torch.bool)
    assert O.mask_iou(pred, target).item() == pytest.approx(2 / 4)


def test_step_losses_best_of_three_and_iou_over_all_outputs():
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    big = 20.0
    perfect = torch.where(target[0, 0] > 0, big, -big)
    logits = torch.stack([torch.zeros(2, 2), perfect, torch.full((2, 2), big)])[None]  # (1, 3, 2, 2)
    iou_pred = torch.tensor([[0.2, 0.5, 0.9]])
    mask_loss, iou_loss = O.step_losses(logits, iou_pred, target)
    assert mask_loss.item() == pytest.approx(0.0, abs=1e-6)  # the perfect output is the best of three
    # true IoUs of the binarised outputs: zeros -> 0 (logits 0 are not > 0), perfect -> 1, all -> 2/4
    expected = ((0.2 - 0.0) ** 2 + (0.5 - 1.0) ** 2 + (0.9 - 0.5) ** 2) / 3
    assert iou_loss.item() == pytest.approx(expected)
    # a single output: its own Dice loss, no minimum over alternatives
    mask_loss1, _ = O.step_losses(logits[:, :1], iou_pred[:, :1], target)
    assert mask_loss1.item() == pytest.approx(1 / 3)


class FakeSam:
    """Records decoder calls; the prompt encoder gives an embedding grid of 4x4 (low-res 16x16)."""

    class prompt_encoder:  # noqa: N801 - mimics the attribute of Sam
        image_embedding_size = (4, 4)


def test_alg1_iteration_structure(monkeypatch):
    """1 + n_steps decoder calls per image, multimask only for a lone point, 2 points added per
    step, mask prompts zero then the previous best low-res logits, loss averaged over steps."""
    size = 16
    masks = torch.zeros(2, 2, size, size)
    masks[:, 0, 2:6, 2:6] = 1
    masks[:, 1, 8:14, 9:15] = 1
    calls = []
    step_logits = [torch.full((2, 3, size, size), -5.0), torch.full((2, 1, size, size), 5.0),
                   torch.full((2, 1, size, size), 0.0)]

    def fake_decode(sam, embedding, prompt, mask_input, multimask, out_size):
        step = len(calls) // 2  # two images per step
        calls.append({"image": len(calls) % 2, "prompt": prompt, "mask": mask_input, "multimask": multimask})
        logits = step_logits[step]
        m = logits.shape[1]
        low = torch.arange(2 * m * 16 * 16, dtype=torch.float32).view(2, m, 16, 16) + 1000 * step
        iou = torch.tensor([[0.1, 0.7, 0.2][:m]] * 2) if m == 3 else torch.full((2, 1), 0.5)
        return logits, low, iou

    monkeypatch.setattr(O, "decode", fake_decode)
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    out = O.alg1_loss_reference(FakeSam(), torch.zeros(2, 8, 4, 4), masks, rngs, use_box=False, use_mask=True,
                      n_steps=2, box_distortion=0.025)
    assert len(calls) == 6
    assert [c["multimask"] for c in calls] == [True, True, False, False, False, False]
    assert [c["prompt"]["points"].shape[1] for c in calls] == [1, 1, 3, 3, 5, 5]
    assert all(c["prompt"]["boxes"] is None for c in calls)
    assert torch.all(calls[0]["mask"] == 0) and calls[0]["mask"].shape == (2, 1, 16, 16)
    # step 1 gets the low-res logits of output 1 (highest predicted IoU 0.7) of step 0
    low0 = torch.arange(2 * 3 * 256, dtype=torch.float32).view(2, 3, 16, 16)
    assert torch.equal(calls[2]["mask"], low0[:, 1:2])
    # the hand-computed loss: each step's (mask + iou) loss, averaged over the 3 steps
    target = masks.flatten(0, 1)[:, None]
    expected_mask, expected_iou = 0.0, 0.0
    for step, logits in enumerate(step_logits):
        iou = torch.tensor([[0.1, 0.7, 0.2]] * 4) if step == 0 else torch.full((4, 1), 0.5)
        mk, io = O.step_losses(torch.cat([logits, logits]), iou, target)
        expected_mask += mk.item() / 3
        expected_iou += io.item() / 3
    assert out["mask_loss"].item() == pytest.approx(expected_mask)
    assert out["iou_loss"].item() == pytest.approx(expected_iou)
    assert out["loss"].item() == pytest.approx(expected_mask + expected_iou)
    # with a box and no mask prompt: box kept through the steps, no multimask, mask input None
    calls.clear()
    O.alg1_loss_reference(FakeSam(), torch.zeros(2, 8, 4, 4), masks, rngs, use_box=True, use_mask=False, n_steps=1,
                box_distortion=0.0)
    assert [c["multimask"] for c in calls] == [False] * 4 and all(c["mask"] is None for c in calls)
    assert calls[0]["prompt"]["boxes"].tolist() == [[2, 2, 6, 6], [9, 8, 15, 14]]
    assert calls[2]["prompt"]["boxes"].tolist() == [[2, 2, 6, 6], [9, 8, 15, 14]]
    assert calls[2]["prompt"]["points"].shape == (2, 2, 2)


def test_alg1_on_tiny_sam_backpropagates():
    from medpipe.models.sam import build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny").train()
    masks = torch.zeros(1, 2, 256, 256)
    masks[0, 0, 20:80, 30:90] = 1
    masks[0, 1, 150:200, 100:220] = 1
    images = torch.randn(1, 3, 256, 256)
    out = O.alg1_loss(sam, sam.image_encoder(images), masks, [np.random.default_rng(0)], use_box=False,
                      use_mask=True, n_steps=1, box_distortion=0.025)
    out["loss"].backward()
    assert 0 < out["mask_loss"].item() <= 1
    assert sam.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert sam.prompt_encoder.mask_downscaling[0].weight.grad is not None


def test_instances_are_components_per_class():
    label = np.zeros((10, 10), np.uint8)
    label[1:4, 1:4] = 1  # 9 px
    label[1:4, 4:6] = 2  # touches class 1 but is another object (6 px)
    label[7:9, 7:9] = 1  # 4 px, a second component of class 1
    label[0, 9] = 2  # 1 px
    inst, n = instances_from_semantic(label, min_px=2)
    assert n == 3
    assert len(np.unique(inst[1:4, 1:4])) == 1 and inst[1, 1] != inst[1, 4] != inst[7, 7]
    assert inst[0, 9] == 0  # below min size
    assert instances_from_semantic(label, min_px=5)[1] == 2


def _label_with(objects: int, size: int = 32) -> np.ndarray:
    label = np.zeros((size, size), np.uint8)
    for i in range(objects):
        label[2 + 6 * i : 6 + 6 * i, 2:8] = 1
    return label


def test_n_obj_sampling_without_replacement():
    image = np.random.default_rng(0).normal(size=(32, 32))
    rng = np.random.default_rng(0)
    kwargs = dict(patch_size=32, input_size=64, min_object_px=4, flips=True, image_prep="crop", pixels=SAM_PIXELS)
    seen = set()
    for _ in range(20):
        sample = make_sample(image, _label_with(4), rng, n_obj=2, **kwargs)
        masks = sample["masks"]
        assert masks.shape == (2, 64, 64)
        assert not torch.any(masks[0].bool() & masks[1].bool())  # two distinct objects
        seen.add(tuple(int(m.nonzero()[0, 0]) for m in masks))
        assert int(sample["foreground"].sum()) == 4 * 24 * 4  # union of all 4 objects, not only the sampled 2
    assert len(seen) > 3  # different objects get drawn
    assert make_sample(image, _label_with(3), rng, n_obj=5, **kwargs)["masks"].shape[0] == 3  # fewer if fewer
    with pytest.raises(Exception, match="no object"):
        make_sample(image, np.zeros((32, 32), np.uint8), rng, n_obj=5, **kwargs)


def test_sample_crop_flip_and_foreground():
    label = np.zeros((40, 100), np.uint8)
    label[10:20, 60:70] = 1
    image = np.where(label > 0, 1000.0, 0.0)
    sample = make_sample(image, label, np.random.default_rng(1), patch_size=32, input_size=64, n_obj=5,
                         min_object_px=4, flips=True, image_prep="crop", pixels=SAM_PIXELS)
    assert sample["image"].shape == (3, 64, 64)
    fg = sample["foreground"][0].bool()
    assert torch.equal(fg, sample["masks"][0].bool())  # one object: foreground == its mask
    assert int(fg.sum()) == 400  # 10x10 object fully inside the 32x32 crop, x2 resize


def test_collate_cuts_to_smallest_object_count_and_batches_shard():
    """Lean samples (uint8 frame + object map) are stacked; the device stage cuts to the smallest count."""
    from medpipe.finetune.data import FOREGROUND, model_inputs

    def sample(k, pos):
        objects = np.zeros((8, 8), np.uint8)
        for i in range(k):
            objects[i, :] = i + 1
        objects[7, 7] = FOREGROUND  # a labelled pixel of an object not drawn
        return {"image": np.zeros((1, 8, 8), np.uint8), "objects": objects, "count": k, "size": (8, 8),
                "position": pos}

    batch = model_inputs(collate([sample(5, 0), sample(2, 1)]), "cpu", image_prep="resize", input_size=16,
                         pixels=SAM_PIXELS)
    assert batch["masks"].shape == (2, 2, 8, 8) and batch["position"].tolist() == [0, 1]
    assert batch["image"].shape == (2, 3, 16, 16) and batch["foreground"].shape == (2, 1, 8, 8)
    assert batch["masks"][0, 1].sum() == 8 and batch["foreground"][0].sum() == 5 * 8 + 1
    single = list(IterationBatches(3, 5, batch_size=4))
    ranks = [list(IterationBatches(3, 5, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    assert single == [[12, 13, 14, 15], [16, 17, 18, 19]]
    assert ranks[0] == [[12, 13], [16, 17]] and ranks[1] == [[14, 15], [18, 19]]


def test_empirical_p_box_p_mask_frequencies():
    draws = np.array([iteration_draws(7, it, 0.3, 0.5) for it in range(4000)])
    assert draws[:, 0].mean() == pytest.approx(0.3, abs=0.03)
    assert draws[:, 1].mean() == pytest.approx(0.5, abs=0.03)
    assert np.all(np.array([iteration_draws(7, it, 1.0, 0.0) for it in range(200)]) == [True, False])
    assert iteration_draws(7, 11, 0.3, 0.5) == iteration_draws(7, 11, 0.3, 0.5)  # reproducible per iteration


def test_schedule_decays():
    assert [lr_factor(i, 0.9, 10) for i in (0, 9, 10, 25)] == pytest.approx([1.0, 1.0, 0.9, 0.81])


def test_lr_decay_none_keeps_the_rate_constant_and_is_validated():
    from medpipe.run_settings import KNOB_DEFAULTS, FinetuneSettings

    assert KNOB_DEFAULTS["lr_decay"] == 0.9  # the paper's x0.9 per epoch stays the default
    base = {**KNOB_DEFAULTS, "run": "r", "preset": "p", "base": "b", "model_type": "tiny", "checkpoint": None}
    constant = FinetuneSettings.from_mapping({**base, "lr_decay": "none"})
    assert constant.decay_factor == 1.0  # the reference code's scheduler never decayed
    assert [lr_factor(i, constant.decay_factor, 10) for i in (0, 10, 1000)] == [1.0, 1.0, 1.0]
    assert FinetuneSettings.from_mapping(base).decay_factor == 0.9
    with pytest.raises(SettingsError, match="lr_decay must be a factor"):
        FinetuneSettings.from_mapping({**base, "lr_decay": "fast"})
    from medpipe.config import ConfigError, validate_config

    def config(value):
        return {"datasets": {"d": {"modality": "ct", "ndim": 2, "images": "x", "labels": "y", "classes": {1: "a"}}},
                "finetune": {"defaults": {"lr_decay": value}}}

    assert validate_config(config("none"))["finetune"]["defaults"]["lr_decay"] == "none"
    with pytest.raises(ConfigError, match="finetune.defaults.lr_decay"):
        validate_config(config("never"))


def test_medicosam_presets_run_eight_decoder_passes_divided_by_eight(monkeypatch):
    """The reference's n_sub_iteration = 8: the initial prompt + 7 corrections, loss / 8."""
    for preset in ("medicosam_p60", "medicosam_full"):
        settings = resolve_run(_config(base="sam_tiny", preset=preset), "r")
        assert settings.decoder_passes == 8
        size, calls = 16, []
        masks = torch.zeros(1, 1, size, size)
        masks[0, 0, 4:10, 4:10] = 1

        def fake_decode(sam, embedding, prompt, mask_input, multimask, out_size, calls=calls, size=size):
            calls.append(prompt)
            m = 3 if multimask else 1
            # pass k = 0..7 predicts the constant logit k - 3: a different loss in every pass
            logits = torch.full((1, m, size, size), float(len(calls) - 4))
            return logits, torch.zeros(1, m, 4, 4), torch.full((1, m), 0.5)

        monkeypatch.setattr(O, "decode", fake_decode)
        out = O.alg1_loss_reference(FakeSam(), torch.zeros(1, 8, 4, 4), masks, [np.random.default_rng(0)], use_box=True,
                          use_mask=False, n_steps=settings["n_steps"], box_distortion=0.0)
        assert len(calls) == 8  # 8 decoder calls for the image
        target = masks[0][:, None]
        per_pass = [O.step_losses(torch.full((1, 1, size, size), float(k - 3)), torch.full((1, 1), 0.5), target)
                    for k in range(8)]
        assert out["mask_loss"].item() == pytest.approx(sum(m.item() for m, _ in per_pass) / 8)
        assert out["iou_loss"].item() == pytest.approx(sum(i.item() for _, i in per_pass) / 8)
        assert calls[-1]["points"].shape == (1, 14, 2)  # 7 corrections of 2 points each


def test_resize_prep_keeps_the_whole_image_and_moves_objects_with_it():
    """image_prep resize (the reference): longest side to patch_size, centred zero padding, no crop;
    objects, masks and foreground in that frame; the image then at the input size."""
    from medpipe.models.transforms import PIXEL_MEAN, PIXEL_STD

    label = np.zeros((40, 100), np.uint8)
    label[10:20, 60:70] = 1
    label[30:36, 2:8] = 2
    image = np.where(label > 0, 1000.0, 0.0)
    sample = make_sample(image, label, np.random.default_rng(1), patch_size=50, input_size=100, n_obj=5,
                         min_object_px=4, flips=False, image_prep="resize", pixels=SAM_PIXELS)
    masks, fg = sample["masks"].bool(), sample["foreground"][0].bool()
    assert sample["image"].shape == (3, 100, 100) and masks.shape == (2, 50, 50) and fg.shape == (50, 50)
    # x0.5 -> 20 x 50, padded by 15 rows on top and bottom; rows 10:20 -> 20:25, cols 60:70 -> 30:35
    expected = np.zeros((50, 50), bool)
    expected[20:25, 30:35] = True
    second = np.zeros((50, 50), bool)
    second[30:33, 1:4] = True
    found = sorted(m.numpy().tobytes() for m in masks)
    assert found == sorted([expected.tobytes(), second.tobytes()])
    assert np.array_equal(fg.numpy(), expected | second)
    # the input frame is the patch frame x2: the object is bright at rows 40:50, the padding dark
    channel0 = sample["image"][0] * PIXEL_STD[0] + PIXEL_MEAN[0]
    assert torch.allclose(channel0[44:46, 64:66], torch.tensor(255.0), atol=1e-3)
    assert torch.allclose(channel0[:30], torch.tensor(0.0), atol=1e-3) and torch.allclose(
        channel0[70:], torch.tensor(0.0), atol=1e-3)
    # crop (today's behaviour, an option) cuts a window at native resolution instead
    crop = make_sample(image, label, np.random.default_rng(1), patch_size=32, input_size=64, n_obj=5,
                       min_object_px=4, flips=False, image_prep="crop", pixels=SAM_PIXELS)
    assert crop["masks"].shape[1:] == (64, 64)


def test_resize_prep_falls_back_when_every_object_vanishes():
    label = np.zeros((40, 40), np.uint8)
    label[0:20:2, 5:30] = 1  # lines of 25 px on even rows: a x0.5 nearest resize keeps odd rows only
    label[30:32, 30:32] = 2  # 4 px: below min_object_px, not an object at native size, but it survives
    sample = make_sample(np.ones((40, 40)), label, np.random.default_rng(0), patch_size=20, input_size=64,
                         n_obj=5, min_object_px=20, flips=False, image_prep="resize", pixels=SAM_PIXELS)
    assert sample["masks"].shape == (1, 20, 20)  # the components of the resized label instead
    assert sample["masks"][0, 15, 15] == 1 and sample["masks"].sum() == 1


def test_decode_scales_prompts_to_the_input_frame_and_logits_to_the_mask_frame():
    from medpipe.models.sam import build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny")  # input 256
    seen = {}
    encode = sam.prompt_encoder.forward

    def spy(points, boxes, masks):
        seen["points"], seen["boxes"] = points, boxes
        return encode(points=points, boxes=boxes, masks=masks)

    sam.prompt_encoder.forward = spy
    prompt = {"boxes": np.array([[10.0, 20.0, 30.0, 40.0]]), "points": np.array([[[12, 25]]]),
              "labels": np.array([[1]])}
    logits, low, _ = O.decode(sam, torch.zeros(64, 16, 16), prompt, None, False, 128)
    assert seen["boxes"].tolist() == [[20.0, 40.0, 60.0, 80.0]]  # 128 px frame -> 256 px input: x2
    assert seen["points"][0].tolist() == [[[24.0, 50.0]]]
    assert logits.shape == (1, 1, 128, 128) and low.shape == (1, 1, 64, 64)
    # SAM's postprocessing: low-res -> input size -> mask frame
    up = torch.nn.functional.interpolate(low.float(), (256, 256), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, torch.nn.functional.interpolate(up, (128, 128), mode="bilinear",
                                                                  align_corners=False))
    logits, _, _ = O.decode(sam, torch.zeros(64, 16, 16), prompt, None, False, 256)
    assert seen["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]  # same frame: unchanged


def test_semantic_dice_is_batch_pooled_and_summed_over_bg_fg_channels():
    # two 1x2 images: image 1 foreground [1, 0] predicted perfectly; image 2 empty, predicts 0.5, 0
    fg_target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    fg_prob = torch.tensor([[[[1.0, 0.0]]], [[[0.5, 0.0]]]])
    probs = torch.cat([1 - fg_prob, fg_prob], dim=1)  # (2, 2, 1, 2): background, foreground
    # foreground pooled over both images: 1 - 2*1 / (1.25 + 1) = 1/9; background: 1 - 2*2.5 / (2.25 + 3) = 1/21
    assert O.semantic_dice_loss(probs, fg_target).item() == pytest.approx(1 / 9 + 1 / 21)
    # (a per-image mean would give 0.5 for the foreground channel alone)
    assert pooled_dice_loss(fg_prob, fg_target).item() == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="shapes differ"):
        pooled_dice_loss(probs, fg_target)


def test_pooled_dice_matches_torch_em_dice_loss():
    loss = pytest.importorskip("torch_em.loss")
    torch.manual_seed(0)
    probs, target = torch.rand(3, 2, 8, 8), (torch.rand(3, 2, 8, 8) > 0.5).float()
    assert pooled_dice_loss(probs, target).item() == pytest.approx(loss.DiceLoss()(probs, target).item(), rel=1e-6)


def _config(**run):
    return {"models": {"sam_tiny": {"type": "tiny", "checkpoint": None},
                       "sam": {"type": "vit_b", "checkpoint": "/w/sam.pth"}},
            "finetune": {"presets": PRESETS, "defaults": {"iterations": 30}, "runs": {"r": run}}}


def test_presets_map_to_the_right_knobs():
    medsam = resolve_run(_config(base="sam", preset="medsam"), "r")
    assert (medsam["n_steps"], medsam["p_box"], medsam["p_mask"], medsam["e_sem"]) == (0, 1.0, 0.0, False)
    assert medsam["lr"] == 5e-5 and medsam["model_type"] == "vit_b" and medsam["iterations"] == 30
    assert medsam["corpus_variant"] == "p60" and medsam["checkpoint"] == "/w/sam.pth"
    simple = resolve_run(_config(base="sam", preset="simpleft"), "r")
    assert (simple["n_steps"], simple["p_box"], simple["p_mask"], simple["e_sem"]) == (0, 0.5, 0.0, False)
    p60 = resolve_run(_config(base="sam", preset="medicosam_p60"), "r")
    assert ((p60["n_steps"], p60["p_box"], p60["p_mask"], p60["e_sem"], p60["corpus_variant"])
            == (7, 0.5, 0.0, False, "p60"))
    full = resolve_run(_config(base="sam_tiny", preset="medicosam_full", iterations=5), "r")
    assert (full["n_steps"], full["p_box"], full["p_mask"], full["e_sem"], full["lr"]) == (7, 0.5, 0.5, True, 1e-5)
    assert full["iterations"] == 5 and full["checkpoint"] is None and full["n_obj"] == 5
    with pytest.raises(SettingsError, match="unknown preset"):
        resolve_run(_config(base="sam", preset="nope"), "r")
    with pytest.raises(SettingsError, match="unknown base"):
        resolve_run(_config(base="nope", preset="medsam"), "r")
    # the resume fingerprint ignores the iteration count but not the objective
    assert fingerprint({**full, "iterations": 99}) == fingerprint(full)
    assert fingerprint({**full, "p_box": 0.4}) != fingerprint(full)


def test_validation_prompt_kinds():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 5:10, 5:10] = True
    rng = np.random.default_rng(0)
    point = O.validation_prompts(masks, rng, "point")
    assert point["points"].shape == (1, 1, 2) and point["boxes"] is None
    box = O.validation_prompts(masks, rng, "box")
    assert box["boxes"].tolist() == [[5, 5, 10, 10]]
    points = O.validation_prompts(masks, rng, "points")
    assert points["labels"].tolist() == [[1, 1, 0, 1, 0]] and points["boxes"] is None
    both = O.validation_prompts(masks, rng, "box+points")
    assert both["labels"].tolist() == [[1, 0]] and both["boxes"] is not None
    with pytest.raises(ValueError, match="unknown validation"):
        O.validation_prompts(masks, rng, "mask")


def test_schema_defaults_match_code_and_demo_runs_resolve(repo_root):
    from medpipe.config import load_config, schema
    from medpipe.run_settings import KNOB_DEFAULTS

    section = schema()["properties"]["finetune"]["properties"]
    assert section["defaults"]["default"] == KNOB_DEFAULTS
    assert section["presets"]["default"] == PRESETS
    config = load_config(repo_root / "config" / "config.yaml")
    runs = {run: resolve_run(config, run) for run in config["finetune"]["runs"]}
    presets = {s["preset"] for s in runs.values()}
    assert {"medsam", "simpleft", "medicosam_p60"} <= presets  # the demo trains the three strategies
    for settings in runs.values():  # from LiteMedSAM's bundled weights, its encoder frozen
        assert settings["model_type"] == "lite_medsam" and settings["checkpoint"] == "bundled"
        assert settings.freeze == ("image_encoder",) and settings.caches_embeddings
        for knob, value in PRESETS[settings["preset"]].items():
            if knob not in ("corpus_variant", "lr"):  # every strategy on its full corpus, at one demo-sized lr
                assert settings[knob] == value, (settings["run"], knob)
