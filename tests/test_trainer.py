"""The finetuning loop: checkpoints, schedule, logging, and exact resume after SIGKILL."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from finetune_fixtures import TINY_RUN, make_corpus, write_config


def _finetune(config, table, stores, out_dir, *extra):
    cmd = [sys.executable, "-m", "medpipe", "finetune", "t", "--config", str(config), "--corpus", str(table),
           "--stores", *map(str, stores), "--out-dir", str(out_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train_rows(path):
    with open(path) as handle:
        return [r for r in csv.DictReader(handle) if r["split"] == "train"]


@pytest.mark.slow
def test_kill_and_resume_gives_bit_identical_weights(tmp_path):
    table, stores = make_corpus(tmp_path)
    config = write_config(tmp_path, {"t": TINY_RUN})
    straight = tmp_path / "straight"
    result = _finetune(config, table, stores, straight)
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = tmp_path / "resumed"
    killed = _finetune(config, table, stores, resumed, "--die-after", "3")
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(resumed / "latest.pt", weights_only=True)
    assert state["iteration"] == 2  # the kill came after iteration 3, before its checkpoint
    assert len(_train_rows(resumed / "metrics.csv")) == 3
    result = _finetune(config, table, stores, resumed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming t" in result.stderr

    a = torch.load(straight / "latest.pt", weights_only=True)
    b = torch.load(resumed / "latest.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    assert a["model_state"].keys() == b["model_state"].keys()
    assert any(k.startswith("sem_decoder.") for k in a["model_state"])
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert "sem_optimizer_state" not in a  # one AdamW for SAM and the e_sem decoder
    for pid, moments in a["optimizer_state"]["state"].items():
        assert torch.equal(moments["exp_avg"], b["optimizer_state"]["state"][pid]["exp_avg"])
    assert a["scheduler_state"]["last_epoch"] == b["scheduler_state"]["last_epoch"] == 4

    # the log of the resumed run: iterations 1..4 once each, same losses as the straight run
    rows_a, rows_b = _train_rows(straight / "metrics.csv"), _train_rows(resumed / "metrics.csv")
    assert [r["iteration"] for r in rows_b] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    for column in ("mask_loss", "iou_loss", "sem_loss", "images_per_s"):
        assert all(r[column] != "" for r in rows_a)
    assert {r["model"] for r in rows_a} == {"tiny:random-init"}  # random init is labelled in every output
    # the schedule decays: x0.9 every 2 iterations
    assert [float(r["lr"]) for r in rows_a] == pytest.approx([1e-4, 1e-4, 9e-5, 9e-5])

    # SIGTERM (cluster preemption): checkpoint after the current iteration, exit 143, rerun resumes
    term = tmp_path / "term"
    cmd = [sys.executable, "-m", "medpipe", "finetune", "t", "--config", str(config), "--corpus", str(table),
           "--stores", *map(str, stores), "--out-dir", str(term)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((term / "metrics.csv").exists() and _train_rows(term / "metrics.csv")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    stopped = torch.load(term / "latest.pt", weights_only=True)["iteration"]
    assert 1 <= stopped < 4 and len(_train_rows(term / "metrics.csv")) == stopped
    assert _finetune(config, table, stores, term).returncode == 0
    c = torch.load(term / "latest.pt", weights_only=True)
    assert all(torch.equal(v, c["model_state"][k]) for k, v in a["model_state"].items())

    summary = json.loads((straight / "training.json").read_text())
    assert summary["model_label"] == "tiny:random-init" and summary["world_size"] == 1
    assert (straight / "best.pt").exists() and list((straight / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(straight.glob(".*.tmp"))  # atomic writes leave no temp files


def test_resume_refuses_changed_objective(tmp_path):
    from medpipe.finetune.command import store_map
    from medpipe.finetune.trainer import train

    from finetune_fixtures import tiny_settings

    table, stores = make_corpus(tmp_path)
    settings = tiny_settings(iterations=1, n_steps=0, val_batches=1, e_sem=False)
    summary = train(settings, table, store_map(stores), tmp_path / "run", 0)
    assert summary["train_images"] == 8 and summary["val_images"] == 1  # 1 empty case, empty slices skipped
    with pytest.raises(RuntimeError, match="different settings"):
        train({**settings, "p_box": 0.1}, table, store_map(stores), tmp_path / "run", 0)
    # more iterations on the same objective continue the run
    summary = train({**settings, "iterations": 2}, table, store_map(stores), tmp_path / "run", 0)
    assert torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["iteration"] == 2


def test_esem_steps_the_same_adamw_twice_per_iteration(tmp_path):
    """The reference's joint training: interactive step, then the decoder step of the SAME AdamW,
    with the encoder run again; the encoder's moments see both steps, the other parts one each."""
    import contextlib

    from medpipe.finetune import distributed as D
    from medpipe.finetune.command import store_map
    from medpipe.finetune.data import collate
    from medpipe.finetune.trainer import set_up, train_step

    from finetune_fixtures import tiny_settings

    table, stores = make_corpus(tmp_path)
    settings = tiny_settings(e_sem=True, n_steps=1, p_mask=0.0, p_box=1.0)
    run = set_up(settings, table, store_map(stores), tmp_path / "run", 0, D.Context(0, 1, 0, torch.device("cpu")))
    stepped = []
    run.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: stepped.append(optimizer))
    encoder_calls = []
    run.sam.image_encoder.register_forward_hook(lambda module, args, out: encoder_calls.append(out.shape))
    ids = {id(p) for p in run.optimizer.param_groups[0]["params"]}
    assert all(id(p) in ids for p in run.model.parameters())  # SAM and decoder in the one optimiser
    batch = collate([run.train_ds[p] for p in range(2)])
    row = train_step(run, batch, 0, contextlib.nullcontext())
    assert len(stepped) == 2 and all(o is run.optimizer for o in stepped)
    assert len(encoder_calls) == 2  # the encoder runs again for the decoder's step
    steps = {name: int(run.optimizer.state[p]["step"]) for name, p in run.model.named_parameters()
             if p in run.optimizer.state}
    assert steps["sam.image_encoder.patch_embed.proj.weight"] == 2  # moments shared by both steps
    assert steps["sam.mask_decoder.iou_prediction_head.layers.0.weight"] == 1
    assert steps["sem_decoder.out_conv.weight"] == 1
    assert run.scheduler.last_epoch == 1  # the schedule counts iterations, not optimiser steps
    assert 0 < row["sem_loss"] <= 2  # two channel Dice losses, summed


def test_samples_do_not_depend_on_loader_workers(tmp_path):
    from torch.utils.data import DataLoader

    from medpipe.finetune.command import store_map
    from medpipe.finetune.data import CorpusSamples, IterationBatches, build_items, collate
    from medpipe.models.transforms import SAM_PIXELS

    from finetune_fixtures import tiny_settings

    table, stores = make_corpus(tmp_path)
    paths = store_map(stores)
    settings = {**tiny_settings(), "input_size": 256}
    items = build_items(table, paths, "train", "full", settings["min_object_px"])
    dataset = CorpusSamples(items, paths, settings, seed=3, pixels=SAM_PIXELS)

    def batches(workers):
        loader = DataLoader(dataset, batch_sampler=IterationBatches(5, 8, 2), num_workers=workers, collate_fn=collate)
        return list(loader)

    plain, workers = batches(0), batches(2)
    assert [b["position"].tolist() for b in plain] == [[10, 11], [12, 13], [14, 15]]  # epochs wrap past 8 items
    for a, b in zip(plain, workers):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["objects"], b["objects"])
    # one epoch visits every item exactly once
    assert sorted(dataset.items.index(dataset.item_at(p)) for p in range(len(items))) == list(range(len(items)))


def test_cli_overrides_refuse_unknown_knobs(tmp_path, capsys):
    from medpipe.cli import main

    config = write_config(tmp_path, {"t": TINY_RUN})
    assert main(["finetune", "t", "--config", str(config), "--corpus", "c.tsv", "--stores", "s.zarr",
                 "--out-dir", str(tmp_path / "o"), "--set", "n_objects=3"]) == 2
    assert capsys.readouterr().err.strip() == "--set n_objects=3: unknown knob 'n_objects'"


@pytest.mark.slow
def test_finetune_rules_dry_run_launch_torchrun_per_gpu(tmp_path, repo_root):
    """The finetune stage's DAG on the demo config, and its launcher for 0 and 2 GPUs."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        f'configfile: "{repo_root}/config/config.yaml"\n'
        f'include: "{repo_root}/workflow/rules/common.smk"\n'
        "rule all:\n    input: lambda wildcards: TARGETS,\n    default_target: True\n"
        f'include: "{repo_root}/workflow/rules/data.smk"\n'
        f'include: "{repo_root}/workflow/rules/finetune.smk"\n')
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")

    def dry_run(*extra):
        result = subprocess.run([snakemake, "-n", "-p", "--cores", "2", "-s", str(snakefile), "-d", str(tmp_path),
                                 "results/tables/compatibility.tsv", *extra], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    out = dry_run()
    for rule, count in (("finetune", 3), ("export_model", 3), ("check_compat", 3), ("compat_table", 1)):
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out[-2000:])
    assert "medpipe finetune medicosam_demo --config" in out and "torchrun" not in out
    assert "results/models/medicosam_demo.export.json" in out  # what was frozen, beside the export
    assert "--model-type lite_medsam --name medsam_demo --base bundled" in out  # shell-quoted only where needed
    out = dry_run("--set-resources", "finetune:gpu=2")  # the launcher follows the job's gpu resource
    assert "torchrun --standalone --nproc_per_node=2 -m medpipe finetune medsam_demo" in out
