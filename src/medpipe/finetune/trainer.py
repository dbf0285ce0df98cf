"""The finetuning loop: Alg. 1 on the corpus with AdamW, a decaying schedule, validation,
atomic checkpoints and exact resume, on one process or under ``torchrun``.

Exact resume holds by construction: every random draw is derived from (seed, iteration) or
(seed, sample position) rather than from a stateful generator, the data order is a function of the
position (see :mod:`medpipe.finetune.data`), and the checkpoint holds the weights, both
optimisers, both schedulers, the iteration and the best validation metric. A run killed at any
moment restarts from ``latest.pt`` and reaches bit-identical weights.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from torch.utils.data import DataLoader
from tqdm import tqdm

from medpipe.finetune import distributed as D
from medpipe.finetune.data import CorpusSamples, IterationBatches, build_items, collate
from medpipe.finetune.objective import VALIDATION_KINDS, alg1_loss, semantic_dice_loss, validation_dice_loss
from medpipe.finetune.sem_decoder import decoder_for
from medpipe.finetune.settings import fingerprint, model_label
from medpipe.sam import build_sam

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["iteration", "split", "loss", "mask_loss", "iou_loss", "sem_loss", "lr", "images_per_s",
                  "use_box", "use_mask", "model"]
# Seed streams: independent random sequences derived from the master seed.
STREAM_TRAIN, STREAM_VAL, STREAM_DRAWS, STREAM_PROMPTS, STREAM_VAL_PROMPTS = 0, 1, 2, 3, 4


class FinetuneModel(nn.Module):
    """SAM plus the optional joint semantic decoder; state keys ``sam.*`` and ``sem_decoder.*``."""

    def __init__(self, sam, sem_decoder: nn.Module | None = None):
        super().__init__()
        self.sam = sam
        self.sem_decoder = sem_decoder


def enable_activation_checkpointing(sam) -> None:
    """Recompute each ViT block in the backward pass (less memory, same keys and results)."""
    for block in sam.image_encoder.blocks:
        forward = block.forward
        block.forward = lambda x, f=forward: activation_checkpoint(f, x, use_reentrant=False)


def lr_factor(iteration: int, decay: float, every: int) -> float:
    """Learning-rate factor after ``iteration`` optimiser steps: ``decay ** (iteration // every)``."""
    return decay ** (iteration // every)


def save_atomic(blob: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


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
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
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
    broadcast anyway (SPEC 3.1).
    """
    draws = np.random.default_rng([seed, STREAM_DRAWS, iteration])
    return [bool(draws.random() < p_box), bool(draws.random() < p_mask)]


PREEMPTED_EXIT = 143  # 128 + SIGTERM: the job did not finish, a rerun resumes


class PreemptionFlag:
    """Turns SIGTERM / SIGINT (cluster preemption, Ctrl-C) into a request to checkpoint and stop
    after the current iteration, instead of losing everything since the last checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        log.warning("received signal %d; will checkpoint after this iteration and stop", signum)
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _image_rngs(seed: int, stream: int, positions) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, stream, int(p)]) for p in positions]


@torch.no_grad()
def validate(model: FinetuneModel, dataset: CorpusSamples, settings: dict, seed: int, device) -> dict:
    """Mean Dice loss over a fixed set of validation batches, cycling the prompt kinds
    point / box / points / box+points; plus the semantic decoder's Dice loss / 3 when e_sem."""
    model.eval()
    batch = settings["batch_size"]
    inter, sem = [], []
    for index in range(settings["val_batches"]):
        data = collate([dataset[p] for p in range(index * batch, (index + 1) * batch)])
        images, masks = data["image"].to(device), data["masks"].to(device).float()
        embeddings = model.sam.image_encoder(images)
        rngs = _image_rngs(seed, STREAM_VAL_PROMPTS, data["position"])
        kind = VALIDATION_KINDS[index % len(VALIDATION_KINDS)]
        inter.append(float(validation_dice_loss(model.sam, embeddings, masks, rngs, kind)))
        if model.sem_decoder is not None:
            logits = model.sem_decoder(embeddings, images)
            sem.append(float(semantic_dice_loss(logits, data["foreground"].to(device).float())))
    model.train()
    result = {"interactive": float(np.mean(inter))}
    result["semantic"] = float(np.mean(sem)) if sem else float("nan")
    result["metric"] = result["interactive"] + (result["semantic"] / 3 if sem else 0.0)
    return result


def train(settings: dict, corpus_table, store_paths: dict[str, str], out_dir, seed: int,
          die_after: int | None = None) -> dict:
    """Run (or continue) finetune run ``settings['run']``; returns the summary written to ``training.json``.

    ``die_after``: fault injection for tests, SIGKILL this process once that many iterations are
    done (after any checkpoint of that iteration).
    """
    ctx = D.setup()
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(ctx)
    torch.manual_seed(seed)
    sam = build_sam(settings["model_type"], settings.get("checkpoint"))
    native = sam.image_encoder.img_size
    settings = dict(settings)
    if settings.get("input_size") in (None, native):
        settings["input_size"] = native
    else:
        raise ValueError(f"finetune run {settings['run']}: input_size {settings['input_size']} differs from the "
                         f"{settings['model_type']} model's input size {native}; SAM-compatible export needs it")
    decoder = decoder_for(sam) if settings["e_sem"] else None
    model = FinetuneModel(sam, decoder).to(ctx.device).train()
    if settings["activation_checkpointing"]:
        enable_activation_checkpointing(sam)

    train_items = build_items(corpus_table, store_paths, "train", settings["corpus_variant"], settings["min_object_px"])
    val_items = build_items(corpus_table, store_paths, "val", settings["corpus_variant"], settings["min_object_px"])
    train_ds = CorpusSamples(train_items, store_paths, settings, seed, STREAM_TRAIN)
    val_ds = CorpusSamples(val_items, store_paths, {**settings, "flips": False}, seed, STREAM_VAL) if val_items else None
    global_batch = settings["batch_size"] * ctx.world_size
    decay_every = settings["lr_decay_every"] or max(len(train_items) // global_batch, 1)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: lr_factor(it, settings["lr_decay"], decay_every))

    optimizer = torch.optim.AdamW(sam.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    scheduler = schedule(optimizer)
    sem_optimizer = sem_scheduler = None
    if decoder is not None:  # reference: own optimiser over decoder + encoder, stepped after the interactive one
        sem_params = list(decoder.parameters()) + list(sam.image_encoder.parameters())
        sem_optimizer = torch.optim.AdamW(sem_params, lr=settings["lr"], weight_decay=settings["weight_decay"])
        sem_scheduler = schedule(sem_optimizer)

    start, best = 0, float("inf")
    latest, best_path = out_dir / "latest.pt", out_dir / "best.pt"
    print_fp = fingerprint(settings)
    if latest.exists():
        state = torch.load(latest, map_location=ctx.device, weights_only=True)
        if state.get("fingerprint") != print_fp:
            raise RuntimeError(f"{latest}: was written with different settings (fingerprint {state.get('fingerprint')} "
                               f"!= {print_fp}); delete {out_dir} to start this run afresh")
        model.load_state_dict(state["model_state"], strict=True)
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        if sem_optimizer is not None:
            sem_optimizer.load_state_dict(state["sem_optimizer_state"])
            sem_scheduler.load_state_dict(state["sem_scheduler_state"])
        start, best = int(state["iteration"]), float(state["best_metric"])
        torch.set_rng_state(state["torch_rng"].cpu())
        log.info("resuming %s from %s at iteration %d", settings["run"], latest, start)
    D.broadcast_parameters(model, ctx)

    def save(path: Path, iteration: int) -> None:
        blob = {
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "iteration": iteration,
            "best_metric": best,
            "torch_rng": torch.get_rng_state(),
            "fingerprint": print_fp,
            "settings": json.loads(json.dumps(settings, default=str)),
            "model_type": settings["model_type"],
            "model_label": model_label(settings),
            "world_size": ctx.world_size,
        }
        if sem_optimizer is not None:
            blob.update(sem_optimizer_state=sem_optimizer.state_dict(), sem_scheduler_state=sem_scheduler.state_dict(),
                        sem_decoder_config=decoder.config)
        save_atomic(blob, path)

    metrics = MetricsLog(out_dir, start, ctx.is_main, model_label(settings))
    preemption = PreemptionFlag()
    loader = DataLoader(train_ds, batch_sampler=IterationBatches(start, settings["iterations"], settings["batch_size"],
                                                                 ctx.rank, ctx.world_size),
                        num_workers=settings["num_workers"], collate_fn=collate)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=ctx.device.type == "cuda" and settings["bf16"])
    sam_params = list(sam.parameters())
    progress = tqdm(total=settings["iterations"], initial=start, desc=settings["run"], disable=not ctx.is_main)
    val_result = None
    for it, batch in enumerate(loader, start=start):
        tick = time.perf_counter()
        k = D.global_min(batch["masks"].shape[1], ctx)
        images = batch["image"].to(ctx.device, non_blocking=True)
        masks = batch["masks"][:, :k].to(ctx.device).float()
        use_box, use_mask = D.broadcast_flags(iteration_draws(seed, it, settings["p_box"], settings["p_mask"]), ctx)
        rngs = _image_rngs(seed, STREAM_PROMPTS, batch["position"])
        lr = optimizer.param_groups[0]["lr"]
        model.zero_grad(set_to_none=True)
        with autocast:
            embeddings = sam.image_encoder(images)
            losses = alg1_loss(sam, embeddings, masks, rngs, use_box=use_box, use_mask=use_mask,
                               n_steps=settings["n_steps"], box_distortion=settings["box_distortion"])
        losses["loss"].backward()
        D.average_gradients(sam_params, ctx)
        optimizer.step()
        scheduler.step()
        row = {k_: float(v.detach()) for k_, v in losses.items()}
        if decoder is not None:  # Alg. 1 lines 37-40, own backward and step (the encoder is updated twice)
            model.zero_grad(set_to_none=True)
            with autocast:
                logits = decoder(sam.image_encoder(images), images)
                sem_loss = semantic_dice_loss(logits, batch["foreground"].to(ctx.device).float())
            sem_loss.backward()
            D.average_gradients(sem_params, ctx)
            sem_optimizer.step()
            sem_scheduler.step()
            row["sem_loss"] = float(sem_loss.detach())
        row = D.mean_over_ranks(row, ctx)
        done = it + 1
        elapsed = time.perf_counter() - tick
        metrics.add({**row, "iteration": done, "split": "train", "lr": lr, "images_per_s": global_batch / elapsed,
                     "use_box": int(use_box), "use_mask": int(use_mask)})
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4f}")
        last = done == settings["iterations"]
        if val_ds is not None and (done % settings["val_every"] == 0 or last):
            val_result = validate(model, val_ds, settings, seed, ctx.device) if ctx.is_main else None
            if ctx.is_main:
                metrics.add({"iteration": done, "split": "val", "loss": val_result["metric"],
                             "mask_loss": val_result["interactive"],
                             "sem_loss": "" if np.isnan(val_result["semantic"]) else val_result["semantic"]})
                if val_result["metric"] < best:
                    best = val_result["metric"]
                    save(best_path, done)
                    log.info("iteration %d: new best validation metric %.4f", done, best)
        stop = D.any_rank(preemption.requested, ctx)
        if ctx.is_main and (done % settings["checkpoint_every"] == 0 or last or stop):
            save(latest, done)
        D.barrier(ctx)
        if stop:  # preempted (SIGTERM/SIGINT): the checkpoint above makes the rerun continue from here
            log.warning("stopping after iteration %d on request; rerun to resume from %s", done, latest)
            metrics.close()
            preemption.restore()
            D.teardown(ctx)
            raise SystemExit(PREEMPTED_EXIT)
        if die_after is not None and done == die_after:
            os.kill(os.getpid(), signal.SIGKILL)
    progress.close()
    metrics.close()
    preemption.restore()
    divergence = D.max_divergence(model, ctx)  # data parallelism must keep every rank's weights equal
    if divergence > 0:
        log.error("weights differ across ranks by up to %g", divergence)
    summary = {}
    if ctx.is_main:
        if not best_path.exists():  # no validation split: the final weights are the best we know
            shutil.copyfile(latest, best_path)
        summary = {"run": settings["run"], "iterations": settings["iterations"], "model_type": settings["model_type"],
                   "base": settings["base"], "model_label": model_label(settings), "preset": settings["preset"],
                   "best_metric": None if best == float("inf") else best, "world_size": ctx.world_size,
                   "rank_divergence": divergence,
                   "train_images": len(train_items), "val_images": len(val_items), "settings": settings}
        write_json_atomic(summary, out_dir / "training.json")
    D.teardown(ctx)
    return summary
