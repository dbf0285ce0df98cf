"""Data parallelism across processes started by ``torchrun`` (NCCL on GPU, gloo on CPU).

Alg. 1 calls the prompt encoder and mask decoder 1 + n_steps times per iteration and, depending on
the draws, leaves some parameters unused (box vs point embeddings, the mask-prompt encoder); this
is what makes ``DistributedDataParallel`` fail with "marked ready twice" / unfinished reductions.
We therefore average gradients explicitly after each backward pass: the ranks first agree which
parameters got a gradient on any rank; those gradients are all-reduced in flat buckets (a rank
without one contributes zero, as in DDP). A parameter no rank used keeps no gradient at all, so
AdamW leaves it untouched (no weight decay, no momentum step), exactly as in a single process; a
zero-filled gradient would move it. The result is the gradient of the loss averaged over the
global batch, identical on every rank, so parameters stay identical across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

BUCKET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "cpu", timeout_s: float | None = None) -> Context:
    """Join the process group torchrun describes (env ``WORLD_SIZE`` > 1), else a single process.

    ``device`` is what the job was given: ``cuda`` (one GPU per process, NCCL) or ``cpu`` (gloo).
    There is no fallback: a ``cuda`` job without a usable GPU stops here with a
    :class:`~medpipe.hardware.DeviceError` naming the cause, instead of training on the CPUs.
    ``timeout_s``: how long a collective waits for the other ranks before failing
    (``finetune.process_group_timeout_s``) instead of the backend's default.
    """
    from medpipe.hardware import DeviceError, require_cuda

    if device not in ("cpu", "cuda"):
        raise ValueError(f"finetune device must be cpu or cuda, got {device!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        require_cuda()
        if local >= torch.cuda.device_count():
            raise DeviceError(f"rank {rank} has local rank {local} but only {torch.cuda.device_count()} GPUs are "
                              "visible on this node (torchrun --nproc_per_node must equal the node's GPUs)")
        torch_device = torch.device(f"cuda:{local}")
        torch.cuda.set_device(torch_device)
    else:
        torch_device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        timeout = {"timeout": timedelta(seconds=float(timeout_s))} if timeout_s else {}
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", **timeout)
    return Context(rank, world, local, torch_device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(module: torch.nn.Module, ctx: Context) -> None:
    """Make every rank start from rank 0's weights."""
    if ctx.distributed:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_buffers(module: torch.nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank, as DDP's ``broadcast_buffers``
    keeps them; rank 0 writes the checkpoints, so its statistics are the ones that count."""
    if ctx.distributed:
        for tensor in module.buffers():
            dist.broadcast(tensor, src=0)


def average_gradients(params, ctx: Context) -> None:
    """All-reduce-average the gradients of ``params`` in flat buckets (no-op for one process)."""
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)  # used on any rank
    params = [p for p, flag in zip(params, used.tolist()) if flag]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= BUCKET_BYTES:
            _reduce(bucket, ctx)
            bucket, size = [], 0
    if bucket:
        _reduce(bucket, ctx)


def _reduce(grads: list[torch.Tensor], ctx: Context) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_flags(flags: list[bool], ctx: Context) -> list[bool]:
    """Rank 0's per-iteration draws (p_box, p_mask) on every rank."""
    if not ctx.distributed:
        return flags
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=ctx.device)
    dist.broadcast(tensor, src=0)
    return [bool(v) for v in tensor.tolist()]


def global_min(value: int, ctx: Context) -> int:
    """The smallest ``value`` over ranks (the per-batch object count is cut to it)."""
    if not ctx.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """Average logged scalars over ranks (the loss of the global batch)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return {k: v / ctx.world_size for k, v in zip(keys, tensor.tolist())}


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def max_divergence(module: torch.nn.Module, ctx: Context) -> float:
    """Largest absolute difference of any weight between a rank and rank 0 (0.0 when in sync)."""
    if not ctx.distributed:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for tensor in module.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        if tensor.is_floating_point():
            worst = torch.maximum(worst, (tensor.detach() - reference).abs().max().double())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same iteration)."""
    if not ctx.distributed:
        return bool(flag)
    tensor = torch.tensor([int(flag)], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
