"""Cross-checks against the reference implementation: micro-sam 1.8.14 on the same images and weights.

micro-sam is a test extra (tests/requirements-microsam.txt, installed with --no-deps by
scripts/setup.sh). Its evaluation code hard-codes SAM's 1024 px geometry (prompt transform, 256 x 256
mask prompts), so the model is a tiny random SAM with that geometry, built here. Both sides get the
same image embedding (micro-sam's ``precompute_image_embeddings`` is replaced by ours; a separate test
checks that our encoder path equals micro-sam's), and micro-sam's random draws are made deterministic
(``np.random.choice`` returns 0, the first pixel of the sampled region in row-major order), as are ours
(a generator whose ``integers`` returns 0), so every prediction of the protocols must agree, not only
the first.
"""

from functools import partial

import numpy as np
import pytest
import torch
from scipy import ndimage
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from medpipe.interactive import eval2d, objects, preprocess, propagate3d
from medpipe.interactive.embeddings import EmbeddingCache
from medpipe.interactive.predictor import BatchedPredictor
from medpipe.store import DatasetStore

from interactive_fixtures import write_store

micro_sam = pytest.importorskip("micro_sam")
import micro_sam.evaluation.inference as mei  # noqa: E402
from micro_sam import util as mutil  # noqa: E402
from micro_sam.multi_dimensional_segmentation import segment_mask_in_volume  # noqa: E402

MIN_IOU = 0.99


def tiny_sam_1024(seed: int = 0) -> Sam:
    """A small random SAM with SAM's geometry: 1024 px input, 16 px patches, 64^2 embedding, 256^2 masks."""
    torch.manual_seed(seed)
    return Sam(
        image_encoder=ImageEncoderViT(depth=1, embed_dim=32, img_size=1024, mlp_ratio=2,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
                                      qkv_bias=True, use_rel_pos=True, global_attn_indexes=(), window_size=8,
                                      out_chans=32),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=32, mlp_dim=64, num_heads=2), transformer_dim=32, iou_head_depth=3,
            iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


@pytest.fixture(scope="module")
def sam():
    return tiny_sam_1024()


class FirstPixel:
    """Our side of the deterministic draw: every ``integers(n)`` is 0 (the region's first pixel)."""

    def integers(self, *args, **kwargs):
        return 0


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def scene_2d():
    """A non-square grey image with two classes: blobs, a 1-px diagonal vessel, a speck below 20 px."""
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros((h, w), np.uint8)
    label[(yy - 30) ** 2 + (xx - 35) ** 2 < 15 ** 2] = 1
    label[(yy - 70) ** 2 / 12 ** 2 + (xx - 40) ** 2 / 22 ** 2 < 1] = 1
    for i in range(40):
        label[10 + i, 70 + i] = 2  # thin diagonal vessel: one 8-connected object
    label[60:80, 95:120] = 2
    label[88:91, 5:8] = 1  # 9 px speck
    rng = np.random.default_rng(0)
    image = (label * 70 + rng.normal(60, 12, label.shape)).clip(0, 4000).astype(np.uint16)
    return image, label


def reference_objects(label: np.ndarray, class_id: int, min_size: int = 20) -> np.ndarray:
    """medico-sam's objects of one class: skimage label (full connectivity), torch-em's size filter."""
    from skimage.measure import label as sk_label
    from torch_em.util.segmentation import size_filter

    return size_filter(sk_label(label == class_id), min_size=min_size)


def test_2d_objects_and_centres_equal_the_reference():
    _, label = scene_2d()
    label = preprocess.label_2d(label, "reference")
    ours = objects.connected_objects(label, {1: "a", 2: "b"})
    for class_id in (1, 2):
        reference = reference_objects(label, class_id)
        mine = [o for o in ours if o.class_id == class_id]
        assert len(mine) == reference.max()
        for number, obj in enumerate(mine, start=1):
            assert np.array_equal(obj.mask, reference == number), (class_id, number)
        centres, _ = mutil.get_centers_and_bounding_boxes(reference)
        points = eval2d.object_centres(mine)[:, 0]
        assert [tuple(p) for p in points.tolist()] == [(c[1], c[0]) for _, c in sorted(centres.items())]
    rng = np.random.default_rng(1)  # random blobs: our centre rule is micro-sam's, ties included
    for _ in range(100):
        blobs = np.zeros((24, 24), bool)
        for _ in range(3):
            cy, cx, r = rng.integers(3, 21, size=2).tolist() + [int(rng.integers(2, 6))]
            yy, xx = np.mgrid[:24, :24]
            blobs |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        parts, _ = ndimage.label(blobs, structure=np.ones((3, 3)))
        centres, _ = mutil.get_centers_and_bounding_boxes(parts)
        from medpipe import prompts

        assert {k: tuple(v[::-1]) for k, v in prompts.center_points(parts).items()} == {
            k: tuple(c) for k, c in centres.items()}


def test_our_encoder_path_equals_micro_sams_on_a_reference_image(sam):
    """With preprocess: reference the image is 1024 x 1024 uint8, spanning 0..255: micro-sam's _to_image
    leaves it as it is and SAM needs no resize, so both encoders see the same pixels."""
    image, _ = scene_2d()
    rgb = preprocess.image_2d(image, "reference")
    assert rgb.shape == (1024, 1024, 3) and rgb.min() == 0 and rgb.max() == 255
    ours = BatchedPredictor(sam).encode(rgb[None])[0]
    theirs = mutil.precompute_image_embeddings(SamPredictor(sam), rgb, save_path=None, ndim=2, verbose=False)
    np.testing.assert_allclose(ours, np.asarray(theirs["features"])[0], atol=1e-4)


def run_micro_sam_2d(sam, monkeypatch, embedding, original_size, input_size, gt, start, masks, n_iterations):
    """micro-sam's per-image iterative prompting on one class image; returns (n_iterations, N, H, W) masks."""
    captured = []
    features = {"features": np.asarray(embedding)[None], "input_size": tuple(input_size),
                "original_size": tuple(original_size)}
    monkeypatch.setattr(mutil, "precompute_image_embeddings", lambda *a, **k: features)
    monkeypatch.setattr(mei, "_save_segmentation", lambda m, path: captured.append(m.cpu().numpy()[:, 0] > 0.5))
    monkeypatch.setattr(np.random, "choice", lambda n, *a, **k: 0)
    mei._run_inference_with_iterative_prompting_for_image(
        SamPredictor(sam), np.zeros((*original_size, 3), np.uint8), gt, start_with_box_prompt=start == "box",
        dilation=5, batch_size=32, embedding_path=None, n_iterations=n_iterations,
        prediction_paths=[None] * n_iterations, use_masks=masks == "on")
    monkeypatch.undo()
    return np.stack(captured)


@pytest.mark.parametrize("mode", ["reference", "aspect"])
def test_2d_protocol_equals_micro_sam_at_every_prediction(sam, mode, tmp_path, monkeypatch):
    """Our 2D evaluation and micro-sam's ``_run_inference_with_iterative_prompting_for_image`` (medico-sam
    runs it per class) on the same image and weights: per-object masks of all 8 predictions agree, for
    box and point start, mask prompts off and on."""
    image, label = scene_2d()
    store = DatasetStore(write_store(tmp_path / "s.zarr", "s", 2, {1: "a", 2: "b"}, {"c0": (image, label)}))
    predictor = BatchedPredictor(sam)
    cache = EmbeddingCache(tmp_path / "e.zarr", "tiny1024", "k", predictor.img_size, preprocess=mode)
    (item,) = list(eval2d.images_of_case(predictor, cache, store, "c0"))
    # 2 blobs + the vessel and the box; at 1024 x 1024 (reference) the speck is an object too
    assert [(o.class_id, o.index) for o in item.objects] == (
        [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)] if mode == "reference" else [(1, 0), (1, 1), (2, 0), (2, 1)])
    input_size = predictor.input_size(item.original_size)
    n_iterations, changed = 8, 0
    for start in ("box", "point"):
        for masks in ("off", "on"):
            ours = np.stack(list(eval2d.predictions(predictor, item.embedding, item.original_size, item.objects,
                                                    start, masks, n_iterations, FirstPixel())))
            assert ours.shape[:2] == (n_iterations, len(item.objects))
            for class_id in (1, 2):
                members = [i for i, o in enumerate(item.objects) if o.class_id == class_id]
                gt = np.zeros(item.original_size, np.uint32)
                for number, i in enumerate(members, start=1):
                    gt[item.objects[i].mask] = number
                theirs = run_micro_sam_2d(sam, monkeypatch, item.embedding, item.original_size, input_size, gt,
                                          start, masks, n_iterations)
                assert theirs.shape[:2] == (n_iterations, len(members))
                for iteration in range(n_iterations):
                    for k, i in enumerate(members):
                        score = iou(ours[iteration, i], theirs[iteration, k])
                        assert score >= MIN_IOU, (mode, start, masks, class_id, iteration, k, score)
            changed += int(any(not np.array_equal(ours[0, i], ours[-1, i]) for i in range(len(item.objects))))
    assert changed >= 2  # the corrections change the masks: the later predictions are compared too


def volume_scene():
    z, h, w = 9, 96, 128
    zz, yy, xx = np.mgrid[:z, :h, :w]
    gt = ((zz - 4) / 4.5) ** 2 + ((yy - 48) / 25.0) ** 2 + ((xx - 60) / 35.0) ** 2 < 1
    rng = np.random.default_rng(0)
    volume = (rng.normal(50, 8, gt.shape) + 100 * gt).clip(0, 255).astype(np.uint8)
    return volume, gt


@pytest.fixture(scope="module")
def volume_embeddings(sam):
    volume, gt = volume_scene()
    predictor = BatchedPredictor(sam)
    embeddings = predictor.encode(preprocess.volume(volume, "reference"))
    return predictor, embeddings, gt


def bioimage_cpp_distance(off_boundary):
    from bioimage_cpp.distance import distance_transform
    from bioimage_cpp.filters import gaussian_smoothing

    return gaussian_smoothing(distance_transform(off_boundary), sigma=1.0)


def test_scipy_distance_is_bioimage_cpps():
    """The v1.8 rule's scipy stand-in for bioimage-cpp's distance transform + Gaussian agrees to ~1e-7."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((40, 50)) < 0.6)
        off = ~propagate3d.find_boundaries(mask, mode="outer")
        np.testing.assert_allclose(propagate3d.distance_v18(off), bioimage_cpp_distance(off), atol=1e-5)


@pytest.mark.parametrize("projection", propagate3d.PROJECTIONS)
def test_3d_propagation_equals_segment_mask_in_volume(sam, volume_embeddings, projection, monkeypatch):
    """Our propagation (micro_sam_rules: v1.8) and micro-sam's ``segment_mask_in_volume`` from the same
    start mask, for every IoU threshold and box extension of a small grid: the same slices, the same masks.

    A random SAM's masks are noisy, with hundreds of distance maxima and exact ties among them, where
    scipy's Gaussian (1e-7 away from bioimage-cpp's) may pick another pixel: the smoothing itself is
    bioimage-cpp's here, so the rest of the rule is compared exactly."""
    monkeypatch.setattr(propagate3d, "distance_v18", bioimage_cpp_distance)
    predictor, embeddings, gt = volume_embeddings
    size = gt.shape[1:]
    features = {"features": embeddings[:, None], "input_size": predictor.input_size(size), "original_size": size}
    z0 = 4
    reference_predictor = SamPredictor(sam)
    walked = 0
    for threshold in (0.0, 0.5):
        for extension in (0.0, 0.1):
            point = propagate3d.GridPoint(threshold, projection, extension)
            ours = propagate3d.propagate(predictor, embeddings, size, gt[z0], z0, point, "v1.8")
            seg = np.zeros(gt.shape, np.uint32)
            seg[z0] = gt[z0]
            theirs, _ = segment_mask_in_volume(seg, reference_predictor, features, np.array(z0), False, False,
                                               iou_threshold=threshold, projection=projection,
                                               box_extension=extension)
            for z in range(len(gt)):
                assert iou(ours[z], theirs[z] == 1) >= MIN_IOU, (point, z)
            walked += int(ours.any(axis=(1, 2)).sum())
    assert walked > 4 * 2  # the walks leave the start slice


def test_3d_start_mask_equals_micro_sams_first_slice(sam, volume_embeddings):
    """The start slice: box prompt, single-mask head, and only the first connected component kept
    (micro-sam's batched_inference + mask_data_to_segmentation, label 1; 4-connected in 1.8)."""
    from micro_sam.inference import batched_inference

    predictor, embeddings, gt = volume_embeddings
    size = gt.shape[1:]
    for z in (2, 4, 6):
        box = propagate3d.prompts.tight_bbox(gt[z])
        ours = propagate3d.start_mask(predictor, embeddings[z], size, {"points": None, "labels": None, "box": box,
                                                                        "use_mask": False}, "v1.8")
        features = {"features": embeddings[z][None], "input_size": predictor.input_size(size), "original_size": size}
        reference = SamPredictor(sam)
        mutil.set_precomputed(reference, features)
        theirs = batched_inference(reference, None, batch_size=1, boxes=box[None], verbose_embeddings=False)
        assert iou(ours, theirs == 1) >= MIN_IOU, z


def test_3d_point_start_negative_region_equals_the_prompt_generator(monkeypatch):
    """Every candidate of micro-sam's PointAndBoxPromptGenerator(dilation_strength=10) negative point,
    and its fallback (any background pixel), is ours."""
    from micro_sam.prompt_generators import PointAndBoxPromptGenerator

    monkeypatch.setattr(np.random, "choice", lambda n, size=None, replace=True: np.arange(n))
    generator = PointAndBoxPromptGenerator(0, 1, dilation_strength=10)
    masks = []
    yy, xx = np.mgrid[:60, :70]
    masks.append(((yy - 30) ** 2 / 15 ** 2 + (xx - 35) ** 2 / 9 ** 2) < 1)  # ellipse: corners are candidates
    masks.append(np.zeros((60, 70), bool))
    masks[-1][5:40, 5:9] = True
    masks[-1][36:40, 5:50] = True  # an L
    masks.append(np.zeros((60, 70), bool))
    masks[-1][20:30, 20:30] = True  # a square: no candidate
    for mask in masks:
        _, bbox = mutil.get_centers_and_bounding_boxes(mask.astype(np.uint32))
        coords, labels = [], []
        generator._sample_negative_points(torch.from_numpy(mask).float(), bbox[1], coords, labels)
        theirs = {(int(r), int(c)) for r, c in coords}
        region = objects.negative_region(mask)
        assert theirs == {tuple(rc) for rc in np.argwhere(region).tolist()}
    assert not objects.negative_region(masks[-1]).any()


def test_mask_prompts_equal_micro_sams(sam):
    """The v1.8 mask prompt of the mask / points_and_mask projections, square and non-square."""
    from micro_sam.prompt_based_segmentation import _compute_logits_from_mask

    predictor = BatchedPredictor(sam)
    for shape in ((96, 128), (256, 256), (300, 200)):
        mask = np.zeros(shape, bool)
        mask[shape[0] // 4: shape[0] // 2, shape[1] // 3: shape[1] // 2 + 3] = True
        ours = predictor.mask_logits_from_binary(mask[None], "v1.8")[0].numpy()
        np.testing.assert_allclose(ours, _compute_logits_from_mask(mask.astype(np.uint8)), atol=1e-5)
