"""The common training loop of the torch methods (SAM-UNETR, MA-SAM, Swin UNETR).

AdamW, reduce-on-plateau stepped at every validation with the validation metric; the weights with
the lowest validation metric are the ones returned (the last ones when a dataset has no validation
cases). Two losses (``loss``): ``reference`` is medico-sam's combined loss on sigmoid outputs with
its Dice part as the validation metric (SAM-UNETR and MA-SAM, docs/fidelity.md); ``dice_ce`` is
MONAI's ``DiceCELoss`` (0.5/0.5) on logits, also the validation metric (Swin UNETR).

A run survives its job: with ``state_path`` the loop writes its whole state (weights, optimiser,
scheduler, history, best weights, the sampler's and torch's random state) at every validation and
when SIGTERM / SIGINT arrives (SLURM's ``--signal`` lead time, preemption), then exits 143; the
rerun continues from it and ends with the weights of an uninterrupted run. The state file is
removed when training completes. On a GPU the forward pass runs under bf16 autocast (the losses in
float32): SAM-UNETR at batch 6 and 1024 px would otherwise keep ~68 GiB of fp32 activations.

Batches are read ahead by a loader thread (:class:`BatchPrefetcher`, as many batches ahead as the
job has CPUs beyond the first, up to 4), so reading and resizing overlap the GPU step. It draws
them in order from the one sampler generator, so the batches are those of a plain loop, and it
records the generator's state after each batch: the saved state is that of the last trained
batch, not of the read-ahead.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from medpipe.files import load_torch, save_torch
from medpipe.losses import reference_dice_metric, reference_semantic_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    iterations: int = 50_000
    batch_size: int = 6
    lr: float = 1e-4
    weight_decay: float = 0.01
    val_every: int = 500
    val_batches: int = 10
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    loss: str = "dice_ce"

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


LOSSES = ("reference", "dice_ce")


def dice_ce_loss() -> DiceCELoss:
    """Dice + CE with equal weights on softmax outputs; targets are integer label maps (B, 1, ...)."""
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)


def loss_and_metric(name: str):
    """``(training loss, validation metric)`` of a ``loss`` setting; both take (outputs, labels (B, 1, ...))."""
    if name == "reference":
        return reference_semantic_loss, reference_dice_metric
    if name == "dice_ce":
        loss = dice_ce_loss()
        return loss, loss
    raise ValueError(f"unknown semantic loss {name!r}; expected one of {LOSSES}")


def output_activation(name: str) -> str | None:
    """The models' final activation for a ``loss`` setting: sigmoid outputs for the reference loss."""
    return "sigmoid" if name == "reference" else None


def autocast_for(device):
    """bf16 autocast on CUDA, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))


@torch.no_grad()
def validation_loss(model, batches, metric_fn, device) -> float:
    model.eval()
    with autocast_for(device):
        outputs = [(model(x.to(device)), y) for x, y in batches]
    losses = [float(metric_fn(out.float(), y.to(device))) for out, y in outputs]
    model.train()
    return sum(losses) / len(losses)


class BatchPrefetcher:
    """``count`` batches of ``next_batch()`` read ahead by one thread, in order, each with the state of
    ``rng`` right after it was drawn (for the resumable state)."""

    def __init__(self, next_batch, rng, count: int, depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(next_batch, rng, count), daemon=True)
        self._thread.start()

    def _fill(self, next_batch, rng, count):
        try:
            for _ in range(count):
                item = (next_batch(), copy.deepcopy(rng.bit_generator.state) if rng is not None else None)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the training loop, which raises it
            self._queue.put((exc, None))

    def get(self):
        batch, state = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        return batch, state

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)


def prefetch_depth(cpus: int | None = None) -> int:
    """Batches read ahead: the job's CPUs beyond the training process's own, at least 1, at most 4."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    return max(1, min(cpus - 1, 4))


class Interrupted(RuntimeError):
    """Test fault injection: the loop stopped like a killed job (nothing saved at that moment)."""


def _save_state(path: Path, model, optimizer, scheduler, it, history, best_loss, best_state, rng_state, fingerprint):
    save_torch({"iteration": it, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "best_loss": best_loss,
                "best_state": best_state, "numpy_rng": rng_state,
                "torch_rng": torch.get_rng_state(), "fingerprint": fingerprint}, path)


def _load_state(path: Path, fingerprint: str, device):
    if path is None or not Path(path).exists():
        return None
    state = load_torch(path, map_location=device)
    if state.get("fingerprint") != fingerprint:
        log.warning("%s was written by a run with other settings; training starts afresh", path)
        return None
    return state


def fit(model: torch.nn.Module, next_batch, val_batches: list, settings: TrainSettings, device="cpu",
        state_path=None, rng=None, fingerprint: str = "", stop_after: int | None = None) -> dict:
    """Train ``model`` in place; ``next_batch()`` gives (x, y) with y of shape (B, 1, ...).

    ``state_path``: where the resumable state is kept (None: not kept); ``rng``: the numpy generator
    ``next_batch`` draws from, saved with it; ``fingerprint``: identifies the run's settings;
    ``stop_after``: fault injection for tests (raise :class:`Interrupted` after that iteration).
    Returns a history ``{"train": [(iteration, loss)], "val": [(iteration, metric, lr)], "best": it}``.
    """
    from medpipe.preemption import PREEMPTED_EXIT, PreemptionFlag

    model.to(device).train()
    loss_fn, metric_fn = loss_and_metric(settings.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.plateau_factor, patience=settings.plateau_patience)
    history = {"train": [], "val": [], "best": None}
    best_loss, best_state, start = float("inf"), None, 0
    state = _load_state(state_path, fingerprint, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_loss, best_state, start = state["history"], state["best_loss"], state["best_state"], \
            int(state["iteration"])
        if rng is not None and state["numpy_rng"] is not None:
            rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        log.info("resuming from %s at iteration %d", state_path, start)

    rng_state = copy.deepcopy(rng.bit_generator.state) if rng is not None else None

    def save(it):
        if state_path is not None:
            _save_state(Path(state_path), model, optimizer, scheduler, it, history, best_loss, best_state, rng_state,
                        fingerprint)

    preemption = PreemptionFlag()
    autocast = autocast_for(device)
    loader = BatchPrefetcher(next_batch, rng, max(settings.iterations - start, 0), prefetch_depth())
    bar = tqdm(range(start + 1, settings.iterations + 1), desc="train", mininterval=5)
    try:
        for it in bar:
            (x, y), rng_state = loader.get()
            with autocast:
                out = model(x.to(device))
            loss = loss_fn(out.float(), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            history["train"].append((it, value))
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            if val_batches and (it % settings.val_every == 0 or it == settings.iterations):
                val = validation_loss(model, val_batches, metric_fn, device)
                scheduler.step(val)
                history["val"].append((it, val, optimizer.param_groups[0]["lr"]))
                log.info("iteration %d: train loss %.4f, val loss %.4f, lr %.2e", it, value, val,
                         optimizer.param_groups[0]["lr"])
                if val < best_loss:
                    best_loss, history["best"] = val, it
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if it % settings.val_every == 0 or preemption.requested:
                save(it)
            if preemption.requested:
                log.warning("stopping after iteration %d on request; rerun to resume from %s", it, state_path)
                raise SystemExit(PREEMPTED_EXIT)
            if stop_after is not None and it == stop_after:
                raise Interrupted(f"stopped after iteration {it}")
    finally:
        loader.close()
        preemption.restore()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)  # done: a rerun of a finished run starts afresh
    return history
