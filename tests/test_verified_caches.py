"""Every cache and store verifies what it reads (issue 19, item 1)."""

import errno
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from medpipe.finetune.encoder_cache import FrozenEncoder
from medpipe.interactive import eval2d
from medpipe.interactive.embeddings import EmbeddingCache
from medpipe.store import DatasetStore, StoreError

from interactive_fixtures import image_2d, write_store

torch.set_num_threads(1)


def flip_a_bit(path, offset=-6):
    """One bit of one file flipped (a failing disk, a bad copy)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def chunk_files(array_folder):
    return sorted(p for p in (array_folder / "c").rglob("*") if p.is_file())


def test_a_flipped_bit_in_a_store_is_an_error_naming_the_store_and_the_case(tmp_path):
    path = write_store(tmp_path / "d.zarr", "d", 2, {1: "disc", 2: "square"}, {"c0": image_2d(0), "c1": image_2d(1)})
    store = DatasetStore(path)
    before = store.image("c0")
    flip_a_bit(chunk_files(path / "cases" / "c1" / "image")[0])
    np.testing.assert_array_equal(store.image("c0"), before)  # the other case reads as before
    with pytest.raises(StoreError, match=r"d\.zarr: case 'c1': a chunk of its image fails its checksum"):
        store.image("c1")
    with pytest.raises(StoreError, match="case 'c1'"):
        store.image_array("c1")[:4]  # lazy reads too
    assert store.image_array("c1").shape == before.shape  # the array still reads like a zarr array


def counted_predictor():
    from medpipe.interactive.predictor import BatchedPredictor
    from medpipe.models.sam import load_model
    from medpipe.models.specs import ModelSpec

    sam = load_model(ModelSpec("tiny", "tiny", None), seed=0)
    calls = []
    sam.image_encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    return BatchedPredictor(sam, "cpu", 32), calls


def evaluate(predictor, cache_path, store):
    cache = EmbeddingCache(cache_path, "tiny", "k", predictor.img_size, preprocess="aspect")
    union, _ = eval2d.evaluate_dataset(predictor, cache, store, ["c0", "c1"], "tiny", seeds=(0,), n_iterations=1)
    return union, cache.computed


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A store, a filled embedding cache and the results computed with it."""
    root = tmp_path_factory.mktemp("emb")
    store = DatasetStore(write_store(root / "d.zarr", "d", 2, {1: "disc", 2: "square"},
                                     {"c0": image_2d(0), "c1": image_2d(1)}))
    predictor, _ = counted_predictor()
    union, computed = evaluate(predictor, root / "emb.zarr", store)
    assert computed == 2
    return root, store, predictor, union


def copy_cache(root, tmp_path):
    import shutil

    shutil.copytree(root / "emb.zarr", tmp_path / "emb.zarr")
    return tmp_path / "emb.zarr"


def test_a_flipped_bit_in_an_embedding_cache_is_encoded_again_with_a_warning(evaluated, tmp_path, caplog):
    root, store, predictor, union = evaluated
    cache = copy_cache(root, tmp_path)
    flip_a_bit(chunk_files(cache / "c1")[0])
    with caplog.at_level(logging.WARNING):
        again, computed = evaluate(predictor, cache, store)
    assert computed == 1 and "emb.zarr/c1: damaged embedding entry" in caplog.text
    pd.testing.assert_frame_equal(again, union)
    assert evaluate(predictor, cache, store)[1] == 0  # the entry was replaced


def test_swapped_case_folders_of_an_embedding_cache_are_encoded_again(evaluated, tmp_path, caplog):
    root, store, predictor, union = evaluated
    cache = copy_cache(root, tmp_path)
    os.rename(cache / "c0", cache / "tmp")
    os.rename(cache / "c1", cache / "c0")
    os.rename(cache / "tmp", cache / "c1")
    with caplog.at_level(logging.WARNING):
        again, computed = evaluate(predictor, cache, store)
    assert computed == 2 and "embedding entry made for 'c1'" in caplog.text
    pd.testing.assert_frame_equal(again, union)


def test_a_changed_store_never_meets_an_old_embedding(evaluated, tmp_path):
    root, store, predictor, union = evaluated
    cache = copy_cache(root, tmp_path)
    changed = {"c0": image_2d(0), "c1": image_2d(7)}  # same case ids, c1's image from other raw files
    with __import__("medpipe.store", fromlist=["StoreWriter"]).StoreWriter(tmp_path / "d.zarr", "d", "ct", 2,
                                                                           {1: "disc", 2: "square"}) as writer:
        for case_id, (image, label) in changed.items():
            writer.write_case(case_id, image, label, patient_id=case_id, modality="ct", spacing=[1.0, 1.0],
                              sha256={"image": "raw-7" if case_id == "c1" else ""})
        writer.publish()
    new_store = DatasetStore(tmp_path / "d.zarr")
    again, computed = evaluate(predictor, cache, new_store)
    assert computed == 2  # c1 changed; c0's record changed too (its sha256 entry): both encoded anew
    fresh, _ = evaluate(predictor, tmp_path / "fresh.zarr", new_store)
    pd.testing.assert_frame_equal(again, fresh)


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1) * 2


def _entries(folder):
    return sorted(folder.rglob("*.emb"))


@pytest.mark.parametrize("damage", ["flip", "zero", "swap", "wrong_shape", "folder"])
def test_a_damaged_finetune_cache_entry_is_encoded_again_with_a_warning(tmp_path, caplog, damage):
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    encoder = Encoder()
    expected = FrozenEncoder(encoder, "d" * 64, tmp_path, 1e6)(images)
    first, second = _entries(tmp_path)
    if damage == "flip":
        flip_a_bit(first)
    elif damage == "zero":
        first.write_bytes(b"")
    elif damage == "swap":
        a, b = first.read_bytes(), second.read_bytes()
        first.write_bytes(b), second.write_bytes(a)
    elif damage == "wrong_shape":
        from medpipe.finetune.encoder_cache import pack_entry

        first.write_bytes(pack_entry(first.stem, np.zeros((3, 4), np.float32)))
    else:  # unreadable and not replaceable: the run goes on without it
        first.unlink()
        first.mkdir()
    cache = FrozenEncoder(encoder, "d" * 64, tmp_path, 1e6)
    cache._shape = (2, 4, 4)  # as after the first encoding of a run
    with caplog.at_level(logging.WARNING):
        got = cache(images)
    assert torch.equal(got, expected)
    assert cache.misses == (2 if damage == "swap" else 1)
    if damage == "folder":
        assert f"{first}: cannot write to the embedding cache" in caplog.text
        return
    assert f"{first}: damaged cached embedding" in caplog.text
    assert FrozenEncoder(encoder, "d" * 64, tmp_path, 1e6)(images).equal(expected)  # replaced: read back fine


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left on device"),
                                         (errno.EROFS, "Read-only file system")])
def test_a_cache_that_cannot_be_written_never_ends_the_run(tmp_path, caplog, monkeypatch, code, words):
    from medpipe.finetune import encoder_cache

    def full(path, data):
        raise OSError(code, words, str(path))

    monkeypatch.setattr(encoder_cache, "pack_entry", lambda name, array: full(name, array))
    images = torch.ones(3, 3, 4, 4)
    cache = FrozenEncoder(Encoder(), "d" * 64, tmp_path, 1e6)
    with caplog.at_level(logging.WARNING):
        out = cache(images)
    assert out.shape == (3, 2, 4, 4) and cache.full and cache.misses == 3
    assert caplog.text.count(f"cannot write to the embedding cache ({words})") == 1
