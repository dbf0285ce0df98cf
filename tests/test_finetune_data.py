"""Finetune start-up from object tables and the lean loader against today's path (issue 18).

Today's path (label scan at start-up, float32 samples at the input size made by the worker) is kept
verbatim in ``legacy_samples.py``; the new one must give the same items in the same order, and at
every position the same image (within the uint8 rounding of the handed-over frame), masks and
foreground. Prompts are drawn from the masks with the position's generator, so equal masks give
equal prompts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import legacy_samples as legacy
import numpy as np
import pytest
import torch

from medpipe.data.objects import ObjectTable
from medpipe.finetune.command import store_map
from medpipe.finetune.data import (
    CorpusSamples,
    build_items,
    collate,
    lean_sample,
    load_object_table,
    make_sample,
    may_survive,
    sampled_indices,
)
from medpipe.models.transforms import PIXEL_STD, SAM_PIXELS, resize_label, resized_shape
from medpipe.prompts import initial_prompts
from medpipe.store import DatasetStore

from finetune_fixtures import make_corpus, tiny_settings, write_store

# the frame is handed over rounded to uint8 (<= 0.5 grey levels); SAM's bilinear resize is a convex
# combination, so the model input differs from today's by at most 0.5 / std per channel
IMAGE_TOLERANCE = 0.5 / min(PIXEL_STD) + 1e-4


def test_sampled_indices_are_what_resize_label_picks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(3, 300, 2))
        target = int(rng.choice([16, 20, 64, 100, 256, 512]))
        label = rng.integers(0, 40, (h, w)).astype(np.int32)
        new_h, new_w = resized_shape((h, w), target)
        if min(new_h, new_w) == 0:  # too thin to resize (resize_label refuses it too)
            assert len(sampled_indices(min(h, w), 0)) == 0
            continue
        picked = label[np.ix_(sampled_indices(h, new_h), sampled_indices(w, new_w))]
        assert np.array_equal(picked, resize_label(torch.from_numpy(label), target).numpy())


def _legacy_items(table, paths, split, min_px, frame):
    return [(i.dataset, i.case_id, i.z) for i in legacy.build_items(table, paths, split, "full", min_px, frame)]


@pytest.mark.parametrize("frame", [None, 64, 24])
def test_items_from_object_tables_are_todays_items(tmp_path, frame):
    """Same images in the same order as today's label scan (corpus table order, then slice), for
    crop (no frame) and resize mode, at the native size and shrunk to 24 px where objects vanish."""
    table, stores = make_corpus(tmp_path)
    paths = store_map(stores)
    for split in ("train", "val"):
        new = [(i.dataset, i.case_id, i.z) for i in build_items(table, paths, split, "full", 10, frame)]
        old = _legacy_items(table, paths, split, 10, frame)
        # start-up keeps an image whose labels it cannot prove to vanish; the sample rejects it later
        kept = [item for item in new if item in old]
        assert kept == old
        for dataset, case_id, z in set(new) - set(old):
            label = DatasetStore(paths[dataset]).label(case_id)
            assert not legacy._has_object(label if z is None else label[z], 10, frame)
    assert len(build_items(table, paths, "train", "full", 10)) == 8


def test_start_up_reads_the_stored_object_table_and_no_label(tmp_path, monkeypatch):
    table, stores = make_corpus(tmp_path)
    paths = store_map(stores)
    tables = {name: load_object_table(DatasetStore(path)) for name, path in paths.items()}
    expected = [(i.dataset, i.case_id, i.z) for i in build_items(table, paths, "train", "full", 10, 32)]
    monkeypatch.setattr(DatasetStore, "object_table", lambda self: tables[self.name])
    monkeypatch.setattr("medpipe.finetune.data._IMAGES", {})  # a fresh process
    monkeypatch.setattr("medpipe.finetune.data._CASE_INDEX", {})

    def no_label(*args, **kwargs):
        raise AssertionError("start-up read a label")

    monkeypatch.setattr(DatasetStore, "label", no_label)
    monkeypatch.setattr(DatasetStore, "label_array", no_label)
    items = build_items(table, paths, "train", "full", 10, 32)
    assert [(i.dataset, i.case_id, i.z) for i in items] == expected
    assert items.dataset.dtype == np.int32 and items.case.dtype == np.int32 and items.z.dtype == np.int32
    assert all(ids.dtype.kind == "S" for ids in items.case_ids)
    assert set(items.z.tolist()) == {-1, 0, 2}  # 2D cases and the labelled slices of the volumes


@pytest.mark.parametrize("prep,flips", [("resize", False), ("resize", True), ("crop", False), ("crop", True)])
def test_samples_equal_todays_at_every_position(tmp_path, prep, flips):
    """Same position -> same image (within uint8 rounding), masks and foreground as today's loader."""
    table, stores = make_corpus(tmp_path)
    paths = store_map(stores)
    settings = {**tiny_settings(image_prep=prep, flips=flips, patch_size=32 if prep == "resize" else 24),
                "input_size": 64}
    frame = settings["patch_size"] if prep == "resize" else None
    old_items = legacy.build_items(table, paths, "train", "full", settings["min_object_px"], frame)
    dataset = CorpusSamples(build_items(table, paths, "train", "full", settings["min_object_px"], frame), paths,
                            settings, seed=5, pixels=SAM_PIXELS)
    assert len(dataset.items) == len(old_items)
    for position in range(2 * len(old_items)):
        old = legacy.legacy_sample_at(old_items, paths, settings, 5, 0, position, SAM_PIXELS)
        new = dataset.to_device(collate([dataset[position]]), "cpu")
        assert torch.equal(new["masks"][0], old["masks"]), position
        assert torch.equal(new["foreground"][0], old["foreground"])
        assert (new["image"][0] - old["image"]).abs().max() <= IMAGE_TOLERANCE
        for use_box in (False, True):  # the prompts Alg. 1 draws from them with the position's generator
            drawn = [initial_prompts(masks.numpy(), np.random.default_rng([7, position]), use_box, 0.025)
                     for masks in (old["masks"], new["masks"][0])]
            key = "boxes" if use_box else "points"
            assert np.array_equal(drawn[0][key], drawn[1][key])
    assert dataset.rejected == 0


def _random_case(rng, shape, colour, dtype):
    label = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(int(rng.integers(1, 7))):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(1, 12)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, 4)
    label[0, 0] = 1
    size = (*shape, 3) if colour else shape
    bright = 200.0 * (label > 0)
    image = rng.normal(300, 80, size) + (bright[..., None] if colour else bright)
    return np.clip(image, 0, None).astype(dtype), label


@pytest.mark.parametrize("prep", ["resize", "crop"])
def test_make_sample_equals_todays_on_mixed_sizes_and_colours(prep):
    """Sizes like SA-Med2D's (square, 290x320, 181x258, smaller than the patch), grey 8/16-bit and RGB."""
    rng = np.random.default_rng(3)
    kwargs = dict(patch_size=64, input_size=128, n_obj=3, min_object_px=5, pixels=SAM_PIXELS, image_prep=prep)
    for index, (shape, colour, dtype) in enumerate([((96, 96), False, np.uint8), ((29, 32), False, np.uint16),
                                                     ((181, 258), True, np.uint8), ((40, 25), True, np.float32),
                                                     ((290, 320), False, np.int16)]):
        image, label = _random_case(rng, shape, colour, dtype)
        for flips in (False, True):
            if not legacy._has_object(label, 5, 64 if prep == "resize" else None):
                continue
            old = legacy.make_sample(image, label, np.random.default_rng(index), flips=flips, **kwargs)
            new = make_sample(image, label, np.random.default_rng(index), flips=flips, **kwargs)
            assert torch.equal(new["masks"], old["masks"]) and torch.equal(new["foreground"], old["foreground"])
            assert (new["image"] - old["image"]).abs().max() <= IMAGE_TOLERANCE


def test_a_lean_sample_at_patch_512_is_at_most_1_5_mb():
    rng = np.random.default_rng(0)
    for colour in (False, True):
        image, label = _random_case(rng, (512, 512), colour, np.uint8)
        sample = lean_sample(image, label, np.random.default_rng(0), patch_size=512, input_size=1024, n_obj=5,
                             min_object_px=10, flips=False)
        size = sum(v.nbytes for v in sample.values() if isinstance(v, np.ndarray))
        assert sample["image"].dtype == np.uint8 and sample["objects"].dtype == np.uint8
        assert size <= 1.5e6 and sample["image"].shape[0] == (3 if colour else 1)


def _vanishing_corpus(tmp_path):
    """A store of 6 images 40x40 (patch 20 keeps the odd rows and columns): 4 normal ones, one whose
    one object has no pixel on an odd row and column (its bounding box spans them: start-up keeps it,
    the sample loses it) and one whose only pixel is on an even row and column (start-up can tell)."""
    cases = {}
    for i in range(4):
        label = np.zeros((40, 40), np.uint8)
        label[8 * i:8 * i + 8, 10:20] = 1
        cases[f"p{i}_ok"] = ((np.arange(1600) % (50 + 10 * i)).astype(np.uint16).reshape(40, 40), label)
    lines = np.zeros((40, 40), np.uint8)  # a comb: lines on even rows joined by a bar on an even column
    lines[0:20:2, 5:30] = 1
    lines[0:19, 4] = 1
    cases["p4_lines"] = (np.ones((40, 40), np.uint16), lines)
    dot = np.zeros((40, 40), np.uint8)
    dot[10, 10] = 1
    cases["p5_dot"] = (np.ones((40, 40), np.uint16), dot)
    store = write_store(tmp_path / "v.zarr", "v", 2, cases, {1: "a"})
    rows = ["dataset\tcase_id\tpatient_id\tmodality\tsplit\tin_full"]
    rows += [f"v\t{case}\t{case.split('_')[0]}\txray\ttrain\ttrue" for case in sorted(cases)]
    table = tmp_path / "corpus.tsv"
    table.write_text("\n".join(rows) + "\n")
    return table, store_map([store])


def test_vanished_samples_are_replaced_deterministically_by_position(tmp_path):
    table, paths = _vanishing_corpus(tmp_path)
    settings = {**tiny_settings(patch_size=20, min_object_px=1), "input_size": 64}
    items = build_items(table, paths, "train", "full", 1, 20)
    names = [i.case_id for i in items]
    assert "p5_dot" not in names and "p4_lines" in names  # exact where the boxes decide, else kept
    objects = load_object_table(DatasetStore(paths["v"]))
    assert may_survive(objects, 20).tolist() == [True, True, True, True, True, False]

    def samples(dataset):
        return [dataset[p] for p in range(3 * len(items))]

    first = CorpusSamples(items, paths, settings, seed=1, pixels=SAM_PIXELS)
    taken = samples(first)
    hits = [p for p in range(len(taken)) if first.item_at(p).case_id == "p4_lines"]
    assert len(hits) == 3 and first.rejected == 3  # once per epoch
    again = CorpusSamples(items, paths, settings, seed=1, pixels=SAM_PIXELS)
    for p in reversed(range(len(taken))):  # a fresh process, another order (a resumed run): same samples
        sample = again[p]
        assert np.array_equal(sample["image"], taken[p]["image"]) and np.array_equal(sample["objects"],
                                                                                     taken[p]["objects"])
    for p in hits:
        assert taken[p]["objects"].any() and taken[p]["position"] == p
    assert len({taken[p]["image"].tobytes() for p in hits}) > 1  # the replacement depends on the position


def test_a_corpus_case_missing_from_its_store_is_named(tmp_path):
    from medpipe.finetune.data import CorpusError

    table, paths = _vanishing_corpus(tmp_path)
    table.write_text(table.read_text() + "v\tp9_gone\tp9\txray\ttrain\ttrue\n")
    with pytest.raises(CorpusError, match="p9_gone"):
        build_items(table, paths, "train", "full", 1)


def test_an_old_store_is_scanned_once(tmp_path, monkeypatch):
    """An old store (no table) is scanned once per start-up (train and val items); the table equals
    ObjectTable.build on its labels."""
    table, paths = _vanishing_corpus(tmp_path)
    shutil.rmtree(Path(paths["v"]) / "objects")  # as written before ingest kept the table
    store = DatasetStore(paths["v"])
    assert store.object_table() is None
    reads = []
    label = DatasetStore.label
    monkeypatch.setattr(DatasetStore, "label", lambda self, case: reads.append(case) or label(self, case))
    build_items(table, paths, "train", "full", 1, 20)
    build_items(table, paths, "val", "full", 1, 20)
    assert sorted(reads) == sorted(store.case_ids)  # each label once
    built = load_object_table(store)
    direct = ObjectTable.build([(row, -1, store.label(c)) for row, c in enumerate(store.case_ids)], instances=False)
    for name, values in direct.to_arrays().items():
        assert np.array_equal(values, built.to_arrays()[name])


def test_the_process_group_gets_the_configured_timeout(monkeypatch):
    from datetime import timedelta

    from medpipe.config import validate_config
    from medpipe.finetune import distributed as D

    seen = {}
    monkeypatch.setattr(D.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    config = validate_config({"datasets": {"d": {"modality": "ct", "ndim": 2, "images": "x", "labels": "y",
                                                 "classes": {1: "a"}}}})
    ctx = D.setup("cpu", timeout_s=config["finetune"]["process_group_timeout_s"])
    assert ctx.rank == 1 and ctx.world_size == 2
    assert seen["timeout"] == timedelta(seconds=1800) and seen["backend"] in ("gloo", "nccl")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
def test_grey_frames_are_normalised_on_one_channel_as_on_three(dtype):
    """The worker's one-channel shortcut gives today's three-channel percentile normalisation."""
    from medpipe.finetune.data import _grey_normalize
    from medpipe.models.transforms import percentile_normalize, to_three_channels

    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        values = rng.normal(100, 60, (h, w)) * (rng.random((h, w)) < 0.7)  # many zeros, like padding
        image = np.clip(values, 0, None).astype(dtype) if dtype in (np.uint8, np.uint16) else values.astype(dtype)
        expected = percentile_normalize(to_three_channels(image))[..., 0]
        assert np.allclose(_grey_normalize(image), expected, rtol=0, atol=1e-4)


def test_may_survive_is_exact_for_boxes_and_never_drops_a_surviving_image():
    """False only when nothing labelled is left at the frame; exact when every object fills its box."""
    rng = np.random.default_rng(4)
    labels, exact = [], []
    for i in range(300):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        label = np.zeros((h, w), np.uint8)
        boxes_only = i % 2 == 0
        for _ in range(int(rng.integers(1, 4))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            if boxes_only:
                label[y:y + int(rng.integers(1, 4)), x:x + int(rng.integers(1, 4))] = 1
            else:
                label[y, x:x + int(rng.integers(1, 6))] = 2
                label[y:y + int(rng.integers(1, 6)), x] = 2
        labels.append(label)
        one = ObjectTable.build([(0, -1, label)], instances=False)
        box = one.bbox[0]
        exact.append(len(one.area) == 1 and one.area[0] == (box[2] - box[0]) * (box[3] - box[1]))  # a filled box
    table = ObjectTable.build([(i, -1, label) for i, label in enumerate(labels)], instances=False)
    survives = may_survive(table, 16)
    truth = [bool(resize_label(torch.from_numpy(label), 16).any()) for label in labels]
    assert all(s or not t for s, t in zip(survives, truth))  # never drops a surviving image
    assert [s for s, e in zip(survives, exact) if e] == [t for t, e in zip(truth, exact) if e]
    assert not all(survives)  # some images do vanish at 16 px and are left out at start-up
