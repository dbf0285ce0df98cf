"""The finetuning loop: Alg. 1 on the corpus with AdamW, a learning-rate schedule, validation,
atomic checkpoints and exact resume, on one process or under ``torchrun``.

One AdamW holds SAM's and (with e_sem) the semantic decoder's parameters, as in the reference: an
iteration steps it once for the interactive loss and, with e_sem, once more for the decoder's loss
after running the encoder again, so the encoder is updated twice and both steps share the moments
(docs/fidelity.md, "Finetuning").

``freeze`` leaves parts of SAM untrained: they get no gradient and no optimiser state and stay in
eval mode (:func:`set_modes`), so they end bit-identical to the base model. A frozen image encoder
is run without gradients on one image at a time and its embeddings are reused across iterations and
runs when the input repeats (:mod:`medpipe.finetune.encoder_cache`); with e_sem the semantic step
then reads the same embeddings instead of running the encoder again.

Exact resume holds by construction: every random draw is derived from (seed, iteration) or
(seed, sample position) rather than from a stateful generator, the data order is a function of the
position (see :mod:`medpipe.finetune.data`), and the checkpoint holds the weights, the optimiser,
the scheduler, the iteration and the best validation metric. A run killed at any moment restarts
from ``latest.pt`` and repeats the same data, prompt draws and optimiser state. What that guarantees
(docs/reliability.md, "Exact resume"): on CPU bit-identical weights; on CUDA the same trajectory up
to floating-point reduction order, because some CUDA kernels of the backward pass (atomics in
cuDNN's weight gradients, scaled_dot_product_attention's backward, index/scatter backwards) are not
bitwise reproducible even without a resume. The loss's own upsampling is a fixed matrix product
(deterministic), and CUDA runs use fused AdamW (its ``step`` never forces a host sync after resume).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch.utils.data import DataLoader
from tqdm import tqdm

from medpipe.errors import MedpipeError
from medpipe.files import TorchFileError, atomic_path, load_torch, save_torch, write_json
from medpipe.finetune import distributed
from medpipe.finetune.batching import iteration_groups, plan_batches, resume_refusal
from medpipe.finetune.data import CorpusSamples, IterationBatches, build_items, collate
from medpipe.finetune.encoder_cache import FrozenEncoder
from medpipe.finetune.finite import check_step
from medpipe.finetune.objective import (
    VALIDATION_KINDS,
    alg1_loss,
    semantic_dice_loss,
    semantic_outputs,
    validation_dice_loss,
)
from medpipe.models.attention import set_fused_attention
from medpipe.models.sam import build_sam, encoder_digest
from medpipe.models.sem_decoder import decoder_for
from medpipe.models.transforms import pixel_stats
from medpipe.preemption import PREEMPTED_EXIT, PreemptionFlag
from medpipe.run_settings import FinetuneSettings, fingerprint, model_label

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["iteration", "split", "loss", "mask_loss", "iou_loss", "sem_loss", "lr", "images_per_s",
                  "use_box", "use_mask", "model"]


class ResumeError(MedpipeError, RuntimeError):
    """``latest.pt`` cannot be resumed from; the message names the file and the way out."""


# Seed streams: independent random sequences derived from the master seed.
STREAM_TRAIN, STREAM_VAL, STREAM_DRAWS, STREAM_PROMPTS, STREAM_VAL_PROMPTS = 0, 1, 2, 3, 4


class FinetuneModel(nn.Module):
    """SAM plus the optional joint semantic decoder; state keys ``sam.*`` and ``sem_decoder.*``."""

    def __init__(self, sam, sem_decoder: nn.Module | None = None):
        super().__init__()
        self.sam = sam
        self.sem_decoder = sem_decoder


def freeze_parts(sam, parts) -> None:
    """No gradients for the named parts of SAM (``freeze``); they are left out of the optimiser."""
    for part in parts:
        for param in getattr(sam, part).parameters():
            param.requires_grad_(False)


def set_modes(model: FinetuneModel, frozen) -> None:
    """Train mode, except the frozen parts of SAM, which stay in eval mode: their batch-norm
    statistics never move (TinyViT has batch norm) and TinyViT's attention caches are rebuilt from
    the current weights (re-applied after every weight load)."""
    model.train()
    for part in frozen:
        getattr(model.sam, part).eval()


def enable_activation_checkpointing(sam) -> None:
    """Recompute each ViT block in the backward pass (less memory, same keys and results)."""
    if not hasattr(sam.image_encoder, "blocks"):
        raise ValueError("activation_checkpointing wraps ViT blocks; this image encoder has none")
    for block in sam.image_encoder.blocks:
        forward = block.forward
        block.forward = lambda x, f=forward: activation_checkpoint(f, x, use_reentrant=False)


def lr_factor(iteration: int, decay: float, every: int) -> float:
    """Learning-rate factor after ``iteration`` iterations: ``decay ** (iteration // every)``
    (``decay`` 1.0 = constant, ``lr_decay: none``)."""
    return decay ** (iteration // every)


class MetricsLog:
    """``metrics.csv`` (one row per iteration and per validation) and TensorBoard scalars.

    On resume, rows written after the checkpoint's iteration (by the killed run) are dropped so
    the log matches the restored state.
    """

    def __init__(self, out_dir: Path, start: int, enabled: bool, model: str = ""):
        self.enabled, self.model = enabled, model
        self.path = out_dir / "metrics.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if self.path.exists() and start > 0:
            with self.path.open() as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["iteration"]) <= start]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=start)

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, METRIC_COLUMNS).writerow({**{k: row.get(k, "") for k in METRIC_COLUMNS},
                                                            "model": self.model})
        for key in ("loss", "mask_loss", "iou_loss", "sem_loss", "lr", "images_per_s"):
            if row.get(key, "") != "":
                self.writer.add_scalar(f"{row['split']}/{key}", float(row[key]), int(row["iteration"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def iteration_draws(seed: int, iteration: int, p_box: float, p_mask: float) -> list[bool]:
    """This iteration's prompt-type draws: [box (else one point) with p_box, mask prompt with p_mask].

    One draw per iteration for the whole batch (the decoder call of a batch needs one prompt type);
    derived from (seed, iteration) so a resumed run repeats them. Under DDP rank 0's draw is
    broadcast anyway, as in the reference (docs/fidelity.md).
    """
    draws = np.random.default_rng([seed, STREAM_DRAWS, iteration])
    return [bool(draws.random() < p_box), bool(draws.random() < p_mask)]


def _image_rngs(seed: int, stream: int, positions) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, stream, int(p)]) for p in positions]


@torch.no_grad()
def validate(model: FinetuneModel, dataset: CorpusSamples, settings: FinetuneSettings, seed: int, device,
             encode=None) -> dict:
    """Mean Dice loss over a fixed set of validation batches, cycling the prompt kinds
    point / box / points / box+points; plus the semantic decoder's Dice loss / 3 when e_sem.
    ``encode``: the frozen encoder's cache (:class:`FrozenEncoder`), else the model's encoder runs."""
    model.eval()
    encode = encode or model.sam.image_encoder
    batch = settings.batch_size
    inter, sem = [], []
    for index in range(settings.val_batches):
        data = dataset.to_device(collate([dataset[p] for p in range(index * batch, (index + 1) * batch)]), device)
        images, masks = data["image"].to(device), data["masks"].to(device).float()
        embeddings = encode(images)
        rngs = _image_rngs(seed, STREAM_VAL_PROMPTS, data["position"])
        kind = VALIDATION_KINDS[index % len(VALIDATION_KINDS)]
        inter.append(float(validation_dice_loss(model.sam, embeddings, masks, rngs, kind)))
        if model.sem_decoder is not None:
            foreground = data["foreground"].to(device).float()
            probs = semantic_outputs(model.sem_decoder, embeddings, foreground.shape[-1])
            sem.append(float(semantic_dice_loss(probs, foreground)))
    set_modes(model, settings.freeze)
    result = {"interactive": float(np.mean(inter))}
    result["semantic"] = float(np.mean(sem)) if sem else float("nan")
    result["metric"] = result["interactive"] + (result["semantic"] / 3 if sem else 0.0)
    return result


@dataclass
class Run:
    """One finetune run in progress: its settings, model, data, optimiser and where it stands."""

    settings: FinetuneSettings
    ctx: distributed.Context
    out_dir: Path
    seed: int
    model: FinetuneModel
    train_items: list
    val_items: list
    train_ds: CorpusSamples
    val_ds: CorpusSamples | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start: int = 0
    best: float = float("inf")
    frozen_encoder: FrozenEncoder | None = None  # freeze: [image_encoder]
    accumulation: int = 1  # micro-batches per rank and iteration (medpipe.finetune.batching)

    @property
    def sam(self):
        return self.model.sam

    @property
    def decoder(self):
        return self.model.sem_decoder

    @property
    def global_batch(self) -> int:
        return self.settings.batch_size * self.ctx.world_size * self.accumulation

    @property
    def latest(self) -> Path:
        return self.out_dir / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"


def set_up(settings, corpus_table, store_paths: dict[str, str], out_dir, seed: int, ctx: distributed.Context) -> Run:
    """Build the model (seeded), the sample streams and the optimisers of a fresh run."""
    settings = FinetuneSettings.from_mapping(settings)
    torch.manual_seed(seed)
    sam = build_sam(settings.model_type, settings.checkpoint)
    set_fused_attention(sam, settings.attention == "fused")  # same weights and keys; evaluation runs the reference
    native = sam.image_encoder.img_size
    if settings.input_size not in (None, native):
        raise ValueError(f"finetune run {settings.run}: input_size {settings.input_size} differs from the "
                         f"{settings.model_type} model's input size {native}; SAM-compatible export needs it")
    settings = settings.replace(input_size=native)
    decoder = decoder_for(sam, out_channels=2, upsampling=settings.sem_upsampling) if settings.e_sem else None
    model = FinetuneModel(sam, decoder).to(ctx.device)
    freeze_parts(sam, settings.freeze)
    set_modes(model, settings.freeze)
    if settings.activation_checkpointing and not settings.encoder_frozen:
        enable_activation_checkpointing(sam)
    pixels = pixel_stats(sam)  # the model's own input normalisation (LiteMedSAM: [0, 1] images)

    frame = settings.patch_size if settings.image_prep == "resize" else None
    train_items = build_items(corpus_table, store_paths, "train", settings.corpus_variant, settings.min_object_px,
                              frame)
    val_items = build_items(corpus_table, store_paths, "val", settings.corpus_variant, settings.min_object_px, frame)
    train_ds = CorpusSamples(train_items, store_paths, settings, seed, STREAM_TRAIN, pixels=pixels)
    val_ds = (CorpusSamples(val_items, store_paths, settings.replace(flips=False), seed, STREAM_VAL, pixels=pixels)
              if val_items else None)
    plan = plan_batches(settings, ctx.world_size)  # the epoch (and its LR decay) in global batches: GPU-count free
    decay_every = settings.lr_decay_every or max(len(train_items) // plan.global_batch, 1)

    # one AdamW over SAM and the decoder (reference: model params + decoder params); with e_sem it
    # is stepped twice per iteration, so the encoder's moments see both losses. Frozen parts are not in it.
    params = [p for p in sam.parameters() if p.requires_grad]
    params += list(decoder.parameters()) if decoder is not None else []
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                                  fused=ctx.device.type == "cuda")  # fused: no host syncs, also after a resume
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, settings.decay_factor, decay_every))
    return Run(settings, ctx, Path(out_dir), seed, model, train_items, val_items, train_ds, val_ds, optimizer,
               scheduler, accumulation=plan.accumulation)


def resume(run: Run) -> None:
    """Continue from ``latest.pt`` when it exists (same settings only): weights, optimisers, RNG, position."""
    if not run.latest.exists():
        return
    way_out = (f"delete {run.latest} to restart the run from iteration 0"
               + (f", or copy {run.best_path} over it to resume from the best validated checkpoint"
                  if run.best_path.exists() else ""))
    try:
        state = load_torch(run.latest, map_location=run.ctx.device)
    except TorchFileError as exc:  # e.g. truncated by a full disk or a copy cut short
        raise ResumeError(f"{exc}; {way_out}") from exc
    if not isinstance(state, dict):
        raise ResumeError(f"{run.latest}: not a medpipe training checkpoint; {way_out}")
    expected = fingerprint(run.settings)
    if state.get("fingerprint") != expected:
        raise ResumeError(f"{run.latest}: was written with different settings (fingerprint {state.get('fingerprint')} "
                          f"!= {expected}); delete {run.out_dir} to start this run afresh")
    refusal = resume_refusal(state, plan_batches(run.settings, run.ctx.world_size))
    if refusal:
        raise ResumeError(f"{run.latest}: {refusal}")
    try:
        run.model.load_state_dict(state["model_state"], strict=True)
        set_modes(run.model, run.settings.freeze)  # TinyViT: eval-mode caches follow the loaded weights
        run.optimizer.load_state_dict(state["optimizer_state"])
        run.scheduler.load_state_dict(state["scheduler_state"])
        run.start, run.best = int(state["iteration"]), float(state["best_metric"])
        torch.set_rng_state(state["torch_rng"].cpu())
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ResumeError(f"{run.latest}: incomplete or damaged training checkpoint ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); {way_out}") from exc
    log.info("resuming %s from %s at iteration %d", run.settings.run, run.latest, run.start)


def save_checkpoint(run: Run, path: Path, iteration: int) -> None:
    """Everything exact resumption needs, written atomically (and reproducibly)."""
    settings = run.settings
    blob = {
        "model_state": run.model.state_dict(),
        "optimizer_state": run.optimizer.state_dict(),
        "scheduler_state": run.scheduler.state_dict(),
        "iteration": iteration,
        "best_metric": run.best,
        "torch_rng": torch.get_rng_state(),
        "fingerprint": fingerprint(settings),
        "settings": json.loads(json.dumps(dict(settings), default=str)),
        "model_type": settings.model_type,
        "model_label": model_label(settings),
        "freeze": list(settings.freeze),
        "world_size": run.ctx.world_size,
        "global_batch": run.global_batch,
    }
    if run.decoder is not None:
        blob["sem_decoder_config"] = run.decoder.config
    save_torch(blob, path)


def train_step(run: Run, batch, iteration: int, autocast) -> dict:
    """One iteration of Alg. 1 on this rank's batch (or list of ``accumulation`` micro-batches, whose
    gradients add up to those of their union); returns the losses averaged over ranks."""
    settings, ctx, sam = run.settings, run.ctx, run.sam
    # lean uint8 batches -> model inputs, on the device
    parts = [run.train_ds.to_device(part, ctx.device) for part in (batch if isinstance(batch, list) else [batch])]
    k = distributed.global_min(min(part["masks"].shape[1] for part in parts), ctx)
    draws = iteration_draws(run.seed, iteration, settings.p_box, settings.p_mask)
    use_box, use_mask = distributed.broadcast_flags(draws, ctx)
    lr = run.optimizer.param_groups[0]["lr"]
    run.model.zero_grad(set_to_none=True)
    images, frozen, rows = [], [], []
    for part in parts:  # gradient accumulation: each micro-batch's loss counts 1 / len(parts)
        images.append(part["image"].to(ctx.device, non_blocking=True))
        masks = part["masks"][:, :k].to(ctx.device).float()
        rngs = _image_rngs(run.seed, STREAM_PROMPTS, part["position"])
        frozen.append(run.frozen_encoder(images[-1]) if run.frozen_encoder is not None else None)
        with autocast:
            embeddings = sam.image_encoder(images[-1]) if frozen[-1] is None else frozen[-1]
            losses = alg1_loss(sam, embeddings, masks, rngs, use_box=use_box, use_mask=use_mask,
                               n_steps=settings.n_steps, box_distortion=settings.box_distortion)
        (losses["loss"] / len(parts) if len(parts) > 1 else losses["loss"]).backward()
        rows.append({key: value.detach().float() for key, value in losses.items()})  # stays on the device
    distributed.average_gradients(list(sam.parameters()), ctx)
    check_step(iteration, losses, sam.named_parameters(), lambda bad: distributed.any_rank(bad, ctx))
    run.optimizer.step()
    distributed.broadcast_buffers(sam, ctx)  # batch-norm statistics of a trained TinyViT: rank 0's, as DDP keeps them
    scalars = {key: torch.stack([r[key] for r in rows]).mean() for key in rows[0]}
    if run.decoder is not None:  # Alg. 1 lines 37-40: own backward, a second step of the same optimiser
        run.model.zero_grad(set_to_none=True)  # parameters without a gradient are left alone by AdamW
        sem = []
        for part, image, embedded in zip(parts, images, frozen):
            foreground = part["foreground"].to(ctx.device).float()
            with autocast:  # the encoder runs again, with the weights of the interactive step (unless frozen)
                again = sam.image_encoder(image) if embedded is None else embedded
                probs = semantic_outputs(run.decoder, again, foreground.shape[-1])
                sem_loss = semantic_dice_loss(probs, foreground)
            (sem_loss / len(parts) if len(parts) > 1 else sem_loss).backward()
            sem.append(sem_loss.detach().float())
        distributed.average_gradients(list(run.decoder.parameters()) + list(sam.image_encoder.parameters()), ctx)
        check_step(iteration, {"sem_loss": sem_loss}, run.model.named_parameters(),
                   lambda bad: distributed.any_rank(bad, ctx))
        run.optimizer.step()
        distributed.broadcast_buffers(run.decoder, ctx)  # batch-norm statistics: rank 0's, as DDP keeps them
        scalars["sem_loss"] = torch.stack(sem).mean()
    row = dict(zip(scalars, torch.stack(list(scalars.values())).tolist()))  # one device->host transfer
    run.scheduler.step()
    return {**distributed.mean_over_ranks(row, ctx), "lr": lr, "use_box": int(use_box), "use_mask": int(use_mask)}


def validate_and_checkpoint(run: Run, done: int, metrics: MetricsLog, stop: bool) -> None:
    """Validate when due (keeping ``best.pt``) and write ``latest.pt`` when due; rank 0 only writes."""
    settings, ctx = run.settings, run.ctx
    last = done == settings.iterations
    if run.val_ds is not None and (done % settings.val_every == 0 or last) and ctx.is_main:
        result = validate(run.model, run.val_ds, settings, run.seed, ctx.device, run.frozen_encoder)
        metrics.add({"iteration": done, "split": "val", "loss": result["metric"], "mask_loss": result["interactive"],
                     "sem_loss": "" if np.isnan(result["semantic"]) else result["semantic"]})
        if result["metric"] < run.best:
            run.best = result["metric"]
            save_checkpoint(run, run.best_path, done)
            log.info("iteration %d: new best validation metric %.4f", done, run.best)
    if ctx.is_main and (done % settings.checkpoint_every == 0 or last or stop):
        save_checkpoint(run, run.latest, done)
    distributed.barrier(ctx)


def summarize(run: Run, divergence: float) -> dict:
    """The run's summary (``training.json``, the rule's output, written last)."""
    settings = run.settings
    if not run.best_path.exists():  # no validation split: the final weights are the best we know
        shutil.copyfile(run.latest, run.best_path)
    summary = {"run": settings.run, "iterations": settings.iterations, "model_type": settings.model_type,
               "base": settings.base, "model_label": model_label(settings), "preset": settings.preset,
               "freeze": list(settings.freeze),
               "best_metric": None if run.best == float("inf") else run.best, "world_size": run.ctx.world_size,
               "rank_divergence": divergence, "train_images": len(run.train_items),
               "val_images": len(run.val_items), "settings": dict(settings)}
    write_json(run.out_dir / "training.json", summary)
    return summary


def attach_frozen_encoder(run: Run, cache_dir=None, cache_bytes: float = 0) -> None:
    """With a frozen image encoder: encode through :class:`FrozenEncoder`, keeping embeddings in
    ``cache_dir`` (up to ``cache_bytes``) when the inputs repeat (``caches_embeddings``). Called after
    ``resume``, so the digest is that of the weights actually in use."""
    if not run.settings.encoder_frozen:
        return
    keep = cache_dir is not None and cache_bytes > 0 and run.settings.caches_embeddings
    run.frozen_encoder = FrozenEncoder(run.sam.image_encoder, encoder_digest(run.sam), cache_dir if keep else None,
                                       cache_bytes if keep else 0)


def warm_frozen_encoder(run: Run) -> None:
    """Before training: encode every image this run (this rank) will train and validate on, unless
    the cache holds it, in an order of the run's own (seeded by its name). Runs on the same frozen
    encoder that start side by side then fill the cache from different ends and each encodes about
    its share, instead of both encoding the same image at the same time; nothing else changes (the
    training reads the same entries either way)."""
    settings, ctx = run.settings, run.ctx
    batches = IterationBatches(run.start, settings.iterations, settings.batch_size, ctx.rank, ctx.world_size,
                               run.accumulation)
    wanted = [(run.train_ds, p) for batch in batches for p in batch]
    if run.val_ds is not None and ctx.is_main:
        wanted += [(run.val_ds, p) for p in range(settings.val_batches * settings.batch_size)]
    order = np.random.default_rng([run.seed, zlib.crc32(settings.run.encode())]).permutation(len(wanted))
    for index in tqdm(order, desc=f"{settings.run}: embeddings", disable=not ctx.is_main or len(order) < 20):
        if run.frozen_encoder.full:  # no room left: training encodes the rest as it meets them
            break
        dataset, position = wanted[index]
        run.frozen_encoder(dataset.to_device(collate([dataset[position]]), ctx.device)["image"])


def train(settings, corpus_table, store_paths: dict[str, str], out_dir, seed: int,
          die_after: int | None = None, embedding_cache=None, embedding_cache_bytes: float = 0,
          device: str = "cpu", process_group_timeout_s: float | None = None) -> dict:
    """Run (or continue) one finetune run; returns the summary written to ``training.json``.

    ``settings`` is a :class:`FinetuneSettings` (or a mapping of its fields). ``die_after``: fault
    injection for tests, SIGKILL this process once that many iterations are done (after any
    checkpoint of that iteration). ``embedding_cache``: the folder a frozen image encoder's
    embeddings are kept in (up to ``embedding_cache_bytes``), shared by runs on the same encoder.
    ``device``: ``cuda`` or ``cpu``, never chosen silently (:func:`medpipe.finetune.distributed.setup`).
    ``process_group_timeout_s``: how long a rank waits in a collective (:func:`distributed.setup`).
    """
    ctx = distributed.setup(device, process_group_timeout_s)
    if ctx.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    distributed.barrier(ctx)
    run = set_up(settings, corpus_table, store_paths, out_dir, seed, ctx)
    resume(run)
    distributed.broadcast_parameters(run.model, ctx)
    set_modes(run.model, run.settings.freeze)  # after every weight change (TinyViT's eval-mode caches)
    attach_frozen_encoder(run, embedding_cache, embedding_cache_bytes)
    if run.frozen_encoder is not None and run.frozen_encoder.folder is not None:
        warm_frozen_encoder(run)
    settings = run.settings
    metrics = MetricsLog(run.out_dir, run.start, ctx.is_main, model_label(settings))
    preemption = PreemptionFlag()
    loader = DataLoader(run.train_ds, batch_sampler=IterationBatches(run.start, settings.iterations,
                                                                     settings.batch_size, ctx.rank, ctx.world_size,
                                                                     run.accumulation),
                        num_workers=settings.num_workers, collate_fn=collate, pin_memory=ctx.device.type == "cuda")
    log.info("%s: %s", settings.run, plan_batches(settings, ctx.world_size).describe())
    if ctx.device.type == "cuda":  # TF32 where fp32 remains (bf16 autocast covers the rest)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda" and settings.bf16)
    progress = tqdm(total=settings.iterations, initial=run.start, desc=settings.run, disable=not ctx.is_main)
    for iteration, batch in enumerate(iteration_groups(loader, run.accumulation), start=run.start):
        tick = time.perf_counter()
        row = train_step(run, batch, iteration, autocast)
        done = iteration + 1
        metrics.add({**row, "iteration": done, "split": "train",
                     "images_per_s": run.global_batch / (time.perf_counter() - tick)})
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        stop = distributed.any_rank(preemption.requested, ctx)
        validate_and_checkpoint(run, done, metrics, stop)
        if stop:  # preempted (SIGTERM/SIGINT): the checkpoint above makes the rerun continue from here
            log.warning("stopping after iteration %d on request; rerun to resume from %s", done, run.latest)
            metrics.close()
            preemption.restore()
            distributed.teardown(ctx)
            raise SystemExit(PREEMPTED_EXIT)
        if die_after is not None and done == die_after:
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    metrics.close()
    preemption.restore()
    if run.frozen_encoder is not None:
        log.info("frozen image encoder: %d images encoded, %d embeddings read from %s", run.frozen_encoder.misses,
                 run.frozen_encoder.hits, run.frozen_encoder.folder or "(no cache)")
    divergence = distributed.max_divergence(run.model, ctx)  # data parallelism must keep every rank's weights equal
    if divergence > 0:
        log.error("weights differ across ranks by up to %g", divergence)
    summary = summarize(run, divergence) if ctx.is_main else {}
    distributed.teardown(ctx)
    return summary
