"""The common training loop of the torch methods (SAM-UNETR, MA-SAM, Swin UNETR).

Dice + cross-entropy (0.5/0.5, MONAI's ``DiceCELoss``), AdamW, reduce-on-plateau on the
validation loss; the weights with the lowest validation loss are the ones returned (the last
ones when a dataset has no validation cases).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

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

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


def dice_ce_loss() -> DiceCELoss:
    """Dice + CE with equal weights on softmax outputs; targets are integer label maps (B, 1, ...)."""
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)


@torch.no_grad()
def validation_loss(model, batches, loss_fn, device) -> float:
    model.eval()
    losses = [float(loss_fn(model(x.to(device)), y.to(device))) for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def fit(model: torch.nn.Module, next_batch, val_batches: list, settings: TrainSettings, device="cpu") -> dict:
    """Train ``model`` in place; ``next_batch()`` gives (x, y) with y of shape (B, 1, ...).

    Returns a history ``{"train": [(iteration, loss)], "val": [(iteration, loss, lr)], "best": it}``.
    """
    model.to(device).train()
    loss_fn = dice_ce_loss()
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
            val = validation_loss(model, val_batches, loss_fn, device)
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
