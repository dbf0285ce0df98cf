"""``freeze`` in finetuning: frozen parts never change, the rest trains, outputs say what was frozen,
a frozen encoder's embeddings are reused without changing a single number, resume stays exact."""

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch

from medpipe.finetune.command import store_map
from medpipe.finetune.trainer import train
from medpipe.run_settings import SettingsError

from finetune_fixtures import TINY_RUN, make_corpus, tiny_settings, write_config


def _state(path):
    return torch.load(path, weights_only=True)


def test_frozen_parts_stay_bit_identical_and_the_rest_trains(tmp_path):
    """LiteMedSAM with a frozen TinyViT (batch norm inside) and prompt encoder: after a few iterations
    every frozen tensor, buffers included, is bit-identical to the base; the mask decoder changed."""
    from medpipe.export.checkpoint import export
    from medpipe.models.sam import build_sam

    table, stores = make_corpus(tmp_path)
    settings = tiny_settings(model_type="lite_medsam", base="lite", checkpoint="bundled", n_steps=1, batch_size=1,
                             iterations=3, val_every=3, val_batches=1, checkpoint_every=3, lr=1e-3,
                             freeze=["prompt_encoder", "image_encoder"])
    out = tmp_path / "run"
    summary = train(settings, table, store_map(stores), out, 0)
    base = build_sam("lite_medsam", "bundled").state_dict()
    blob = _state(out / "latest.pt")
    trained = {key.removeprefix("sam."): value for key, value in blob["model_state"].items()}
    frozen = [k for k in base if k.startswith(("image_encoder.", "prompt_encoder."))]
    assert any("running_mean" in k for k in frozen)  # TinyViT's batch norm: its statistics are frozen too
    for key in frozen:
        assert torch.equal(trained[key], base[key]), key
    changed = [k for k in base if k.startswith("mask_decoder.") and not torch.equal(trained[k], base[k])]
    assert len(changed) > 0.5 * sum(k.startswith("mask_decoder.") for k in base)
    # frozen parameters have no optimiser state; the outputs say what was frozen (in the part order)
    n_decoder = sum(1 for k in base if k.startswith("mask_decoder.") and "running" not in k)
    assert len(blob["optimizer_state"]["param_groups"][0]["params"]) == n_decoder
    assert blob["freeze"] == summary["freeze"] == ["image_encoder", "prompt_encoder"]
    assert json.loads((out / "training.json").read_text())["settings"]["freeze"] == ["image_encoder", "prompt_encoder"]
    meta = export(out / "latest.pt", tmp_path / "models" / "run.pth")
    assert meta["freeze"] == ["image_encoder", "prompt_encoder"]
    assert json.loads((tmp_path / "models" / "run.export.json").read_text())["freeze"] == meta["freeze"]
    # the export's encoder is the base's: its evaluation may read the base model's embedding cache
    from medpipe.models.sam import encoder_digest

    exported = build_sam("lite_medsam", tmp_path / "models" / "run.pth")
    assert encoder_digest(exported) == encoder_digest(build_sam("lite_medsam", "bundled"))


def test_freeze_names_only_parts_of_sam():
    with pytest.raises(SettingsError, match="only"):
        tiny_settings_obj(freeze=["neck"])
    with pytest.raises(SettingsError, match="nothing would be trained"):
        tiny_settings_obj(freeze=["image_encoder", "prompt_encoder", "mask_decoder"])
    settings = tiny_settings_obj(freeze=["mask_decoder", "image_encoder"])
    assert settings.freeze == ("image_encoder", "mask_decoder") and settings.encoder_frozen
    assert settings.caches_embeddings and not settings.replace(flips=True).caches_embeddings
    assert not settings.replace(image_prep="crop").caches_embeddings


def tiny_settings_obj(**overrides):
    from medpipe.run_settings import FinetuneSettings

    return FinetuneSettings.from_mapping(tiny_settings(**overrides))


def test_cached_embeddings_change_no_number(tmp_path, caplog):
    """A frozen encoder's embeddings read from the cache (written by another run) give the weights
    of a run that encodes every batch itself, bit for bit."""
    table, stores = make_corpus(tmp_path)
    stores = store_map(stores)
    settings = tiny_settings(freeze=["image_encoder"], iterations=4, e_sem=True, val_every=2)
    cache = tmp_path / "cache"
    train(settings, table, stores, tmp_path / "a", 0, embedding_cache=cache, embedding_cache_bytes=1e9)
    entries = sorted(cache.rglob("*.emb"))
    assert entries
    with caplog.at_level(logging.INFO, logger="medpipe.finetune.trainer"):
        train(settings, table, stores, tmp_path / "b", 0, embedding_cache=cache, embedding_cache_bytes=1e9)
    assert "0 images encoded" in caplog.text  # every embedding came from the first run's cache
    assert sorted(cache.rglob("*.emb")) == entries
    train(settings, table, stores, tmp_path / "c", 0)  # no cache at all
    a, b, c = (_state(tmp_path / run / "latest.pt")["model_state"] for run in "abc")
    for key, value in a.items():
        assert torch.equal(value, b[key]) and torch.equal(value, c[key]), key
    # with e_sem, the semantic decoder trained on the frozen embeddings too
    assert any(key.startswith("sem_decoder.") for key in a)


@pytest.mark.slow
def test_kill_and_resume_with_freeze_is_bit_exact(tmp_path):
    table, stores = make_corpus(tmp_path)
    run = {**TINY_RUN, "freeze": ["image_encoder", "prompt_encoder"]}
    config = write_config(tmp_path, {"t": run})

    def finetune(out, *extra):
        cmd = [sys.executable, "-m", "medpipe", "finetune", "t", "--config", str(config), "--corpus", str(table),
               "--stores", *map(str, stores), "--out-dir", str(out), *extra]
        return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)

    assert finetune(tmp_path / "straight").returncode == 0
    killed = finetune(tmp_path / "resumed", "--die-after", "3")
    assert killed.returncode == -signal.SIGKILL
    result = finetune(tmp_path / "resumed")
    assert result.returncode == 0 and "resuming t" in result.stderr, result.stderr[-2000:]
    a, b = _state(tmp_path / "straight" / "latest.pt"), _state(tmp_path / "resumed" / "latest.pt")
    assert a["iteration"] == b["iteration"] == 4 and a["freeze"] == ["image_encoder", "prompt_encoder"]
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    for pid, moments in a["optimizer_state"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer_state"]["state"][pid]["exp_avg"])
    # the run's embeddings went to <results_dir>/finetune_embeddings and were shared by both runs
    assert list((tmp_path / "results" / "finetune_embeddings").rglob("*.emb"))
