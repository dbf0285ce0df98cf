"""The global batch is the experiment, the GPUs are the resource: gradient accumulation from both.

The paper trains with 8 GPUs x 7 images = a global batch of 56. ``global_batch: 56`` in the config
keeps that batch on any node shape: with P processes of ``batch_size`` B each, every iteration
accumulates A = 56 / (P x B) micro-batches per process before the one optimiser step, so 8 GPUs x 1,
4 GPUs x 2 and 2 nodes x 4 GPUs x 1 train the same experiment (the same positions of the sample
stream per iteration, the same gradient up to float reassociation, the same per-epoch LR decay).
``global_batch: null`` keeps the older meaning: B x P, no accumulation.

The sample stream is a function of the position only (:mod:`medpipe.finetune.data`); iteration
``it`` covers positions ``it*G .. (it+1)*G - 1`` whatever (P, A, B) split them. A run may therefore
resume with another world size exactly when its global batch stays the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from medpipe.run_settings import SettingsError


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int  # images per process and micro-batch
    world_size: int  # processes (GPUs) over all nodes
    accumulation: int  # micro-batches per process and iteration

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulation

    def describe(self) -> str:
        return (f"global batch {self.global_batch} = {self.world_size} processes x batch {self.batch_size} x "
                f"accumulation {self.accumulation}")


def plan_batches(settings, world_size: int) -> BatchPlan:
    """The accumulation that makes ``world_size`` processes of ``batch_size`` reach ``global_batch``."""
    per_step = int(settings["batch_size"]) * int(world_size)
    wanted = settings["global_batch"]
    if wanted is None:
        return BatchPlan(int(settings["batch_size"]), int(world_size), 1)
    if int(wanted) % per_step:
        raise SettingsError(
            f"finetune.runs.{settings['run']}: global_batch {wanted} is not a multiple of {world_size} processes x "
            f"batch_size {settings['batch_size']} = {per_step}; change the GPUs (finetune.gpus, nodes) or batch_size")
    return BatchPlan(int(settings["batch_size"]), int(world_size), int(wanted) // per_step)


def resume_refusal(state: dict, plan: BatchPlan) -> str | None:
    """Why a checkpoint cannot be continued with this plan (None when it can): the global batch, and
    with it the sample stream and the LR schedule, must stay the same; the world size may change."""
    saved_world = int(state.get("world_size", 1))
    saved = state.get("global_batch")
    if saved is None:  # checkpoints from before accumulation: batch_size x world size
        saved = plan.batch_size * saved_world
    if int(saved) == plan.global_batch:
        return None
    return (f"was trained with global batch {saved} ({saved_world} processes) but this job has "
            f"{plan.describe()}; the sample stream would change. Run it with the GPUs it had, or set "
            f"finetune global_batch: {saved} (then any GPU count dividing it resumes)")


def iteration_groups(micro_batches: Iterable, accumulation: int) -> Iterator[list]:
    """The loader's micro-batches grouped per iteration (``accumulation`` consecutive ones)."""
    group = []
    for batch in micro_batches:
        group.append(batch)
        if len(group) == accumulation:
            yield group
            group = []
