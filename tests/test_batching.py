"""The global batch is the experiment: gradient accumulation from the world size, the same positions
of the sample stream per iteration, the same weights, the same LR decay, resume across world sizes."""

import pytest
import torch

from medpipe.finetune import distributed as D
from medpipe.finetune.batching import BatchPlan, iteration_groups, plan_batches, resume_refusal
from medpipe.finetune.data import IterationBatches
from medpipe.run_settings import SettingsError

from finetune_fixtures import make_corpus, tiny_settings


def _settings(batch_size, global_batch):
    return {"run": "r", "batch_size": batch_size, "global_batch": global_batch}


def test_accumulation_reaches_the_papers_global_batch_on_any_node_shape():
    assert plan_batches(_settings(7, 56), 8) == BatchPlan(7, 8, 1)
    assert plan_batches(_settings(7, 56), 4).accumulation == 2  # 4-GPU nodes
    assert plan_batches(_settings(7, 56), 1).accumulation == 8
    assert plan_batches(_settings(7, None), 4).global_batch == 28  # null: the old meaning, batch x processes
    with pytest.raises(SettingsError, match="global_batch 56 is not a multiple of 3 processes x batch_size 7"):
        plan_batches(_settings(7, 56), 3)
    with pytest.raises(SettingsError, match="not a multiple of batch_size"):
        tiny_settings_obj(batch_size=3, global_batch=56)


def tiny_settings_obj(**overrides):
    from medpipe.run_settings import FinetuneSettings

    return FinetuneSettings.from_mapping(tiny_settings(**overrides))


def test_every_split_of_the_global_batch_reads_the_same_positions_per_iteration():
    def per_iteration(batch, world, accumulation):
        groups = [list(iteration_groups(IterationBatches(3, 6, batch, r, world, accumulation), accumulation))
                  for r in range(world)]
        return [sorted(p for rank in groups for micro in rank[i] for p in micro) for i in range(3)]

    reference = per_iteration(4, 1, 1)
    assert reference == [list(range(12, 16)), list(range(16, 20)), list(range(20, 24))]
    for batch, world, accumulation in [(2, 2, 1), (1, 2, 2), (2, 1, 2), (1, 4, 1), (1, 1, 4)]:
        assert per_iteration(batch, world, accumulation) == reference, (batch, world, accumulation)
    assert len(IterationBatches(3, 6, 1, 0, 2, 2)) == 6  # micro-batches


def test_resume_across_world_sizes_only_with_the_same_global_batch():
    assert resume_refusal({"world_size": 8, "global_batch": 56}, BatchPlan(7, 4, 2)) is None
    refusal = resume_refusal({"world_size": 8, "global_batch": 56}, BatchPlan(7, 4, 1))
    assert "global batch 56 (8 processes)" in refusal and "global batch 28" in refusal and "\n" not in refusal
    assert resume_refusal({"world_size": 2}, BatchPlan(1, 2, 1)) is None  # a checkpoint from before the knob
    assert resume_refusal({"world_size": 2}, BatchPlan(1, 1, 1)) is not None


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model_state"]


def test_one_process_accumulating_two_equals_one_batch_of_two(tmp_path):
    from medpipe.finetune.command import store_map
    from medpipe.finetune.trainer import train

    table, stores = make_corpus(tmp_path)
    base = tiny_settings(iterations=3, n_steps=1, e_sem=False, val_batches=1, val_every=3, checkpoint_every=3,
                         lr_decay_every=None, weight_decay=0.5)
    single = train({**base, "batch_size": 2}, table, store_map(stores), tmp_path / "single", 0)
    accumulated = train({**base, "batch_size": 1, "global_batch": 2}, table, store_map(stores), tmp_path / "acc", 0)
    a, b = _weights(tmp_path / "single" / "latest.pt"), _weights(tmp_path / "acc" / "latest.pt")
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 2e-5  # float reassociation only (a batch-size or decay mistake moves weights by ~1e-4)
    assert single["train_images"] == accumulated["train_images"]
    assert torch.load(tmp_path / "acc" / "latest.pt", weights_only=False)["global_batch"] == 2


def test_lr_decay_and_resume_follow_the_global_batch_not_the_gpus(tmp_path):
    from medpipe.finetune.command import store_map
    from medpipe.finetune.trainer import ResumeError, resume, set_up, train

    table, stores = make_corpus(tmp_path)
    paths = store_map(stores)
    settings = tiny_settings(iterations=1, n_steps=0, e_sem=False, val_batches=1, lr_decay_every=None,
                             batch_size=1, global_batch=2)
    cpu = torch.device("cpu")
    one, two = (set_up(settings, table, paths, tmp_path / f"w{w}", 0, D.Context(0, w, 0, cpu)) for w in (1, 2))
    assert (one.accumulation, two.accumulation) == (2, 1) and one.global_batch == two.global_batch == 2
    lrs = []
    for run in (one, two):  # 8 training images / global batch 2: decay after 4 iterations on both
        for _ in range(5):
            run.optimizer.step()
            run.scheduler.step()
        lrs.append(run.optimizer.param_groups[0]["lr"])
    assert lrs[0] == lrs[1] == pytest.approx(settings["lr"] * 0.9)

    train(settings, table, paths, tmp_path / "run", 0)  # one process, accumulation 2
    wider = set_up({**settings, "iterations": 2}, table, paths, tmp_path / "run", 0, D.Context(0, 2, 0, cpu))
    resume(wider)  # two processes x 1: same global batch, same stream
    assert wider.start == 1
    plain = {**settings, "global_batch": None}
    train(plain, table, paths, tmp_path / "plain", 0)  # global batch = 1 process x 1
    with pytest.raises(ResumeError, match=r"global batch 1 \(1 processes\) but this job has global batch 2"):
        resume(set_up(plain, table, paths, tmp_path / "plain", 0, D.Context(0, 2, 0, cpu)))
