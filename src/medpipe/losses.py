"""Segmentation losses of the reference code, shared by finetuning (e_sem) and semantic training.

Both follow torch-em / micro-sam / medico-sam exactly (docs/fidelity.md), quirks included:

- :func:`pooled_dice_loss` is torch-em's ``DiceLoss()``: one Dice per channel over the whole batch
  (all images' pixels pooled), ``1 - Dice`` summed over the channels.
- :func:`reference_semantic_loss` is medico-sam's ``CustomCombinedLoss`` for semantic models whose
  outputs are already sigmoid activations: 0.5 x the pooled Dice loss of ``softmax`` over those
  activations against the one-hot target, background channel included, + 0.5 x cross-entropy that
  takes the sigmoid activations as if they were logits. :func:`reference_dice_metric` is the Dice
  part alone (the reference's validation metric, which drives its plateau schedule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``probs`` and ``target`` (B, C, ...) -> ``sum_c (1 - 2 sum(p g) / max(sum(p^2) + sum(g^2), eps))``.

    The sums of channel c run over every image of the batch and every pixel, so a batch is one pool
    (not a mean of per-image Dice); C channels give a loss in [0, C].
    """
    if probs.shape != target.shape:
        raise ValueError(f"pooled_dice_loss: shapes differ, {tuple(probs.shape)} vs {tuple(target.shape)}")
    p = probs.float().transpose(0, 1).flatten(1)
    g = target.to(p.dtype).transpose(0, 1).flatten(1)
    dice = 2.0 * (p * g).sum(-1) / ((p * p).sum(-1) + (g * g).sum(-1)).clamp_min(eps)
    return (1.0 - dice).sum()


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Integer labels (B, 1, ...) -> float one-hot (B, n_classes, ...)."""
    if labels.shape[1] != 1:
        raise ValueError(f"expected labels of shape (B, 1, ...), got {tuple(labels.shape)}")
    classes = torch.arange(n_classes, device=labels.device).view(1, -1, *([1] * (labels.dim() - 2)))
    return (labels == classes).float()


def reference_dice_metric(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """micro-sam ``CustomDiceLoss``: pooled Dice loss of softmax(outputs) vs one-hot labels (B, 1, ...)."""
    return pooled_dice_loss(torch.softmax(outputs.float(), dim=1), one_hot(labels, outputs.shape[1]))


def reference_semantic_loss(outputs: torch.Tensor, labels: torch.Tensor, dice_weight: float = 0.5) -> torch.Tensor:
    """medico-sam ``CustomCombinedLoss`` on sigmoid ``outputs`` (B, C, ...) and labels (B, 1, ...)."""
    dice = reference_dice_metric(outputs, labels)
    ce = F.cross_entropy(outputs.float(), labels[:, 0].long())
    return dice_weight * dice + (1.0 - dice_weight) * ce
