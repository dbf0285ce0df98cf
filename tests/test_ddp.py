"""Data parallelism under torchrun (gloo on CPU): ranks stay in sync and match one process."""

import csv
import json
import os
import subprocess
import sys

import pytest

from finetune_fixtures import TINY_RUN, make_corpus, write_config

RUN = {**TINY_RUN, "iterations": 3, "val_batches": 1, "val_every": 3, "checkpoint_every": 3, "lr_decay_every": None,
       "lr": 1e-4}


def _losses(path):
    with open(path) as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle) if r["split"] == "train"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _max_weight_difference(run_a, run_b) -> float:
    import torch

    a = torch.load(run_a / "latest.pt", map_location="cpu", weights_only=False)["model_state"]
    b = torch.load(run_b / "latest.pt", map_location="cpu", weights_only=False)["model_state"]
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_gloo_ranks_match_single_process_with_same_global_batch(tmp_path):
    table, stores = make_corpus(tmp_path)
    plain = {**RUN, "e_sem": False, "weight_decay": 0.5}  # strong decay: a wrongly stepped parameter shows
    config = write_config(tmp_path, {"single": {**plain, "batch_size": 2}, "ddp": {**plain, "batch_size": 1},
                                     "accumulated": {**plain, "batch_size": 1, "global_batch": 2},
                                     "two_nodes": {**plain, "batch_size": 1},
                                     "ddp_sem": {**RUN, "batch_size": 1}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--config", str(config), "--corpus", str(table), "--stores", *map(str, stores)]

    def torchrun(run):
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "medpipe",
             "finetune", run, "--out-dir", str(tmp_path / run), *common],
            env=env, capture_output=True, text=True, timeout=240)

    ddp = torchrun("ddp")
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    for run in ("single", "accumulated"):  # one process: batch 2, or batch 1 accumulated twice
        single = subprocess.run([sys.executable, "-m", "medpipe", "finetune", run, "--out-dir", str(tmp_path / run),
                                 *common], env=env, capture_output=True, text=True, timeout=240)
        assert single.returncode == 0, single.stderr[-4000:]

    summary = json.loads((tmp_path / "ddp" / "training.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_divergence"] == 0.0  # parameters identical on both ranks after 3 steps
    ddp_losses, single_losses = _losses(tmp_path / "ddp" / "metrics.csv"), _losses(tmp_path / "single" / "metrics.csv")
    assert len(ddp_losses) == len(single_losses) == 3
    assert ddp_losses[0] == pytest.approx(single_losses[0], rel=1e-5)  # same weights, same samples and prompts
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)  # after steps: float reassociation only
    # the weights themselves: a parameter an iteration leaves unused (box corners, mask prompt
    # encoder) gets no AdamW step at all, on one process as on several (no zero-filled gradient)
    assert _max_weight_difference(tmp_path / "ddp", tmp_path / "single") < 2e-5  # zero-filled grads: > 1e-4
    # the global batch as the experiment: 2 ranks x 1 = 1 process x batch 1 x accumulation 2
    assert _max_weight_difference(tmp_path / "ddp", tmp_path / "accumulated") < 2e-5

    # two "nodes" of one process each, as srun starts them: one launcher per node, c10d rendezvous on
    # the allocation's first node (loopback here), the same weights as the single-node two-rank run
    slurm = {**env, "SLURM_JOB_ID": "4711", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "127.0.0.1",
             "MEDPIPE_RDZV_PORT": str(_free_port())}
    launchers = [subprocess.Popen([sys.executable, "-m", "medpipe.finetune.launch", "--nproc-per-node", "1", "--",
                                   "finetune", "two_nodes", "--out-dir", str(tmp_path / "two_nodes"), *common],
                                  env={**slurm, "SLURM_NODEID": str(node)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for node in range(2)]
    for launcher in launchers:
        out, _ = launcher.communicate(timeout=240)
        assert launcher.returncode == 0, out[-4000:]
    assert "--rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:" in out and "--nnodes=2 --nproc-per-node=1" in out
    summary = json.loads((tmp_path / "two_nodes" / "training.json").read_text())
    assert summary["world_size"] == 2 and summary["rank_divergence"] == 0.0
    assert _max_weight_difference(tmp_path / "ddp", tmp_path / "two_nodes") < 1e-6  # same ranks, same sums

    # with e_sem the decoder's batch norm and its batch-pooled Dice work per process (as in the
    # reference), so a DDP run is not a single process any more; its ranks must still stay in sync
    sem = torchrun("ddp_sem")
    assert sem.returncode == 0, sem.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp_sem" / "training.json").read_text())
    assert summary["world_size"] == 2 and summary["rank_divergence"] == 0.0  # batch-norm buffers included
    with open(tmp_path / "ddp_sem" / "metrics.csv") as handle:
        assert all(r["sem_loss"] != "" for r in csv.DictReader(handle) if r["split"] == "train")
