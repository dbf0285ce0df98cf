"""The common training loop of the torch methods (SAM-UNETR, MA-SAM, Swin UNETR).

AdamW, reduce-on-plateau stepped at every validation with the validation metric; the weights with
the lowest validation metric are the ones returned (the last ones when a dataset has no validation
cases). Two losses (``loss``): ``reference`` is medico-sam's combined loss on sigmoid outputs with
its Dice part as the validation metric (SAM-UNETR and MA-SAM, docs/fidelity.md); ``dice_ce`` is
MONAI's ``DiceCELoss`` (0.5/0.5) on logits, also the validation metric (Swin UNETR).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

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


@torch.no_grad()
def validation_loss(model, batches, metric_fn, device) -> float:
    model.eval()
    losses = [float(metric_fn(model(x.to(device)), y.to(device))) for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def fit(model: torch.nn.Module, next_batch, val_batches: list, settings: TrainSettings, device="cpu") -> dict:
    """Train ``model`` in place; ``next_batch()`` gives (x, y) with y of shape (B, 1, ...).

    Returns a history ``{"train": [(iteration, loss)], "val": [(iteration, metric, lr)], "best": it}``.
    """
    model.to(device).train()
    loss_fn, metric_fn = loss_and_metric(settings.loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.plateau_factor, patience=settings.plateau_patience)
    history = {"train": [], "val": [], "best": None}
    best_loss, best_state = float("inf"), None
    bar = tqdm(range(1, settings.iterations + 1), desc="train", mininterval=5)
    for it in bar:
        x, y = next_batch()
        loss = loss_fn(model(x.to(device)), y.to(device))
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
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
