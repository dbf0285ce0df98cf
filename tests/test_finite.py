"""Finite numbers only (issue 19, item 4): a NaN or inf never becomes a weight, a model or a config value."""

import pytest
import torch

from finetune_fixtures import make_corpus, tiny_settings


def test_training_stops_at_the_first_non_finite_loss_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    from medpipe.finetune import trainer
    from medpipe.finetune.command import store_map
    from medpipe.finetune.finite import NonFiniteError

    table, stores = make_corpus(tmp_path)
    real, calls = trainer.alg1_loss, []

    def poisoned(*args, **kwargs):  # the 3rd iteration's embeddings hold a NaN, as a bad image would give
        calls.append(1)
        losses = real(*args, **kwargs)
        return {k: v * float("nan") for k, v in losses.items()} if len(calls) == 3 else losses

    monkeypatch.setattr(trainer, "alg1_loss", poisoned)
    settings = tiny_settings(iterations=4, n_steps=0, val_batches=1, e_sem=False, checkpoint_every=2)
    with pytest.raises(NonFiniteError, match=r"iteration 3: loss 'loss' is nan.*last good iteration"):
        trainer.train(settings, table, store_map(stores), tmp_path / "run", 0)
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model_state"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "training.json").exists()


def test_a_non_finite_gradient_is_named_and_every_rank_stops():
    from medpipe.finetune.finite import NonFiniteError, check_step

    layer = torch.nn.Linear(2, 1)
    loss = layer(torch.ones(1, 2)).sum()
    loss.backward()
    check_step(0, {"loss": loss}, layer.named_parameters(), bool)  # all finite: nothing happens
    layer.bias.grad[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"iteration 8: the gradient of bias has 1 non-finite values"):
        check_step(7, {"loss": loss}, layer.named_parameters(), bool)
    layer.bias.grad[0] = 0.0  # finite here, but another rank saw a NaN: stop too
    with pytest.raises(NonFiniteError, match="another rank"):
        check_step(7, {"loss": loss}, layer.named_parameters(), lambda bad: True)


def test_export_and_model_loaders_refuse_non_finite_weights_naming_the_file(tmp_path):
    from medpipe.cli import main
    from medpipe.export import checkpoint as E
    from medpipe.files import TorchFileError, load_torch
    from medpipe.models.sam import CheckpointError, build_sam, read_state_dict

    state = build_sam("tiny").state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[:2] = float("nan")
    torch.save({"model_state": {f"sam.{k}": v for k, v in state.items()}}, tmp_path / "latest.pt")
    with pytest.raises(E.ExportError, match=rf"latest\.pt: refused: 2 NaN or inf values in 'model_state\.sam\.{name}"):
        E.export(tmp_path / "latest.pt", tmp_path / "o.pth")
    assert main(["export", str(tmp_path / "latest.pt"), str(tmp_path / "o.pth")]) == 2
    assert not (tmp_path / "o.pth").exists()
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"model\.pth: refused: 2 NaN or inf"):
        read_state_dict(tmp_path / "model.pth")
    torch.save({"x": torch.tensor([1.0, float("inf")]), "best": float("inf")}, tmp_path / "any.pt")
    with pytest.raises(TorchFileError, match=r"any\.pt: refused: 1 NaN or inf values in 'x'"):
        load_torch(tmp_path / "any.pt")
    torch.save({"best": float("inf"), "step": torch.tensor(3)}, tmp_path / "ok.pt")  # plain values are not weights
    assert load_torch(tmp_path / "ok.pt")["best"] == float("inf")


def _demo(repo_root):
    import yaml

    return yaml.safe_load((repo_root / "config/config.yaml").read_text())


def _splits(c):
    return c.setdefault("splits", {})


@pytest.mark.parametrize("edit, key, words", [
    (lambda c: _splits(c).update(fractions={"train": float("nan"), "val": 0.5, "test": 0.5}),
     "splits.fractions.train", "nan is not a finite number"),
    (lambda c: _splits(c).update(max_missing=float("nan")), "splits.max_missing", "nan is not a finite number"),
    (lambda c: c["finetune"]["runs"]["medsam_demo"].update(lr=float("inf")), "finetune.runs.medsam_demo.lr",
     "inf is not a finite number"),
    (lambda c: c.update(seed=2**64), "seed", "is greater than the maximum of 4294967295"),
    (lambda c: c.update(seed=-1), "seed", "is less than the minimum of 0"),
    (lambda c: c["datasets"].update({"-rf": c["datasets"].pop("demo_ct")}), "datasets", "'-rf' does not match"),
    (lambda c: c["datasets"].update({"d" * 300: c["datasets"].pop("demo_ct")}), "datasets", "does not match"),
])
def test_the_config_refuses_non_finite_numbers_bad_seeds_and_bad_names(repo_root, edit, key, words):
    from medpipe.config import ConfigError, validate_config

    config = _demo(repo_root)
    edit(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="my.yaml")
    assert f"my.yaml: {key}: " in str(error.value) and words in str(error.value), str(error.value)
    assert len(str(error.value).splitlines()[0]) < 300


def test_names_of_64_characters_and_seeds_up_to_2_32_are_fine(repo_root):
    from medpipe.config import validate_config

    config = _demo(repo_root)
    config["seed"] = 2**32 - 1
    config["datasets"]["d" * 64] = config["datasets"].pop("demo_ct")
    validate_config(config, source="my.yaml")


@pytest.mark.parametrize("value, words", [
    (".", "is the working directory"), ("src/medpipe", "inside the source tree"),
    ("workflow/out", "inside the source tree"), ("/etc", "system folder"), ("/usr/local/x", "system folder"),
    ("/tmp", "system folder"), ("loop/results", "cannot be resolved"),
])
def test_results_dir_is_never_the_source_tree_a_system_folder_or_a_symlink_loop(repo_root, tmp_path, monkeypatch,
                                                                                  value, words):
    from medpipe.config import ConfigError, validate_config

    monkeypatch.chdir(repo_root)
    config = _demo(repo_root)
    config["results_dir"] = value
    if value.startswith("loop"):
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^my\.yaml: results_dir: .*{words}"):
        validate_config(config, source="my.yaml")
