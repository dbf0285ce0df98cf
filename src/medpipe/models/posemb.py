"""Resize SAM's positional embeddings to a new input size (a defect of the reference code: docs/fidelity.md).

A ViT trained at 1024 px has a 64x64 absolute position grid and relative position tables of
length 2*64-1 in its global-attention blocks. At another input size both must be interpolated;
the reference code built a fresh encoder whose embeddings stayed at their zero init, silently
discarding what the checkpoint learned. Windowed blocks keep their tables: the window size does
not change with the input size.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def interpolate_abs_pos(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, H, W, C) absolute position grid -> (1, grid, grid, C), bicubic like ViTDet/timm."""
    if pos_embed.shape[1:3] == (grid, grid):
        return pos_embed.clone()
    x = pos_embed.permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


def interpolate_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative position table -> (length, C), linear (SAM's own rule in ``get_rel_pos``)."""
    if rel_pos.shape[0] == length:
        return rel_pos.clone()
    x = rel_pos.t()[None].float()
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x[0].t().to(rel_pos.dtype)


def resize_encoder(encoder: nn.Module, img_size: int) -> nn.Module:
    """Adapt a ``segment_anything`` ``ImageEncoderViT`` in place to ``img_size`` px inputs.

    Returns the encoder. ``img_size`` must be a multiple of the patch size.
    """
    if not hasattr(encoder, "pos_embed") or not hasattr(encoder, "blocks"):
        if img_size == encoder.img_size:
            return encoder
        raise ValueError(f"this {type(encoder).__name__} encoder takes {encoder.img_size} px inputs only "
                         f"(no ViT positional embeddings to resize to {img_size} px)")
    patch = encoder.patch_embed.proj.stride[0]
    if img_size % patch:
        raise ValueError(f"input size {img_size} is not a multiple of the patch size {patch}")
    grid = img_size // patch
    old = encoder.img_size
    if encoder.pos_embed is not None:
        encoder.pos_embed = nn.Parameter(interpolate_abs_pos(encoder.pos_embed.data, grid))
    for block in encoder.blocks:
        inner = getattr(block, "block", block)  # adapter wrappers keep the SAM block as .block
        attn = inner.attn
        if inner.window_size == 0 and getattr(attn, "use_rel_pos", False):
            attn.rel_pos_h = nn.Parameter(interpolate_rel_pos(attn.rel_pos_h.data, 2 * grid - 1))
            attn.rel_pos_w = nn.Parameter(interpolate_rel_pos(attn.rel_pos_w.data, 2 * grid - 1))
    encoder.img_size = img_size
    if old != img_size:
        log.info("resized encoder positional embeddings from %d px to %d px (grid %d)", old, img_size, grid)
    return encoder
