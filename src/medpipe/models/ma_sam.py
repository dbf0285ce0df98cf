"""MA-SAM-style 3D segmentation on SAM's encoder (docs/fidelity.md, "Semantic segmentation").

Each ViT block gets two 3D adapters (before attention and before the MLP): LayerNorm -> Linear
(C -> C/2, no bias) -> reshape to (B, C/2, D, h, w) -> Conv3d with kernel (3, 1, 1) (with bias) ->
GELU -> Linear (C/2 -> C, no bias), added residually (micro-sam ``NDBlockWrapper``). Batch and
depth are flattened through the encoder, so everything but the adapters stays a 2D SAM that mixes
no information across slices; the adapters are the only place where slices talk to each other. A
2D decoder (the SAM-UNETR decoder without classifier activation) runs per slice, the slice outputs
are stacked to a volume and a 3D convolutional head fuses and classifies them. Adapters start at
random init; the model input size may differ from the checkpoint's, in which case the positional
embeddings are interpolated (``posemb.resize_encoder``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medpipe.models.posemb import resize_encoder
from medpipe.models.sem_decoder import decoder_for


class Adapter3D(nn.Module):
    """x (B*D, h, w, C) -> x + up(GELU(conv3d_z(down(LN(x))))) with slices mixed along z only."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim // 2
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden, bias=False)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        bd, h, w, _ = x.shape
        if bd % depth:
            raise ValueError(f"batch*depth {bd} is not a multiple of depth {depth}")
        y = self.down(self.norm(x))  # (B*D, h, w, c)
        c = y.shape[-1]
        y = y.view(bd // depth, depth, h, w, c).permute(0, 4, 1, 2, 3)  # (B, c, D, h, w)
        y = self.act(self.conv(y))
        y = y.permute(0, 2, 3, 4, 1).reshape(bd, h, w, c)
        return x + self.up(y)


class AdaptedBlock(nn.Module):
    """A ``segment_anything`` ViT block with an adapter before its attention and before its MLP."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        dim = block.norm1.normalized_shape[0]
        self.adapter_attn = Adapter3D(dim)
        self.adapter_mlp = Adapter3D(dim)
        self.depth = 1  # slices per volume of the current forward pass; set by MaSam3D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from segment_anything.modeling.image_encoder import window_partition, window_unpartition

        b = self.block
        x = self.adapter_attn(x, self.depth)
        shortcut = x
        x = b.norm1(x)
        if b.window_size > 0:
            hw = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, b.window_size)
        x = b.attn(x)
        if b.window_size > 0:
            x = window_unpartition(x, b.window_size, pad_hw, hw)
        x = shortcut + x
        x = self.adapter_mlp(x, self.depth)
        return x + b.mlp(b.norm2(x))


class MaSam3D(nn.Module):
    """(B, 3, D, S, S) SAM-normalised slices -> (B, n_classes, D, S, S) logits (or sigmoid outputs)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, n_classes: int, activation: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.activation = activation
        feats = decoder.config["out_channels"]
        self.head = nn.Sequential(
            nn.Conv3d(feats, feats, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm3d(feats, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(feats, n_classes, kernel_size=1),
        )

    @property
    def input_size(self) -> int:
        return int(self.encoder.img_size)

    def adapter_parameters(self):
        return [p for name, p in self.named_parameters() if ".adapter_" in name]

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = volumes.shape
        slices = volumes.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        for block in self.encoder.blocks:
            block.depth = d
        features = self.decoder(self.encoder(slices))  # (B*D, F, S, S)
        features = features.view(b, d, -1, h, w).permute(0, 2, 1, 3, 4)
        out = self.head(features)
        return torch.sigmoid(out) if self.activation == "sigmoid" else out


def build_ma_sam(sam, n_classes: int, input_size: int | None = None, freeze_encoder: bool = False,
                 activation: str | None = None) -> MaSam3D:
    """MA-SAM on a copy of ``sam``'s encoder; ``freeze_encoder`` trains only adapters, decoder and head;
    ``activation`` of the outputs (sigmoid with the reference loss, else logits)."""
    if not hasattr(sam.image_encoder, "blocks"):
        raise ValueError(f"MA-SAM puts adapters into ViT blocks; this {type(sam.image_encoder).__name__} encoder "
                         "has none (a lite_medsam backbone cannot be used with ma_sam)")
    encoder = copy.deepcopy(sam.image_encoder)
    if input_size and input_size != encoder.img_size:
        resize_encoder(encoder, input_size)
    if freeze_encoder:
        for p in encoder.parameters():
            p.requires_grad_(False)
    encoder.blocks = nn.ModuleList(AdaptedBlock(block) for block in encoder.blocks)
    width = decoder_for(sam).config["initial_features"]  # per-slice features: the decoder's last width
    decoder = decoder_for(sam, out_channels=width, activation=None)
    return MaSam3D(encoder, decoder, n_classes, activation)


def blockwise_predict(predict, volume: torch.Tensor, depth: int, halo: int) -> torch.Tensor:
    """Run ``predict`` on z-blocks of ``volume`` (C, Z, Y, X) and stitch the cores.

    Each call sees ``depth`` slices: a core of ``depth - 2*halo`` slices plus ``halo`` slices of
    context on each side (zero-padded at the volume ends), so every kept slice had context in z.
    ``predict`` maps (1, C, depth, Y, X) -> (1, K, depth, Y, X); the result is (K, Z, Y, X).
    """
    core = depth - 2 * halo
    if core < 1:
        raise ValueError(f"block depth {depth} leaves no core slices with halo {halo}")
    z = volume.shape[1]
    out = None
    for start in range(0, z, core):
        stop = min(start + core, z)
        lo, hi = start - halo, start - halo + depth
        block = volume[:, max(lo, 0) : min(hi, z)]
        block = torch.nn.functional.pad(block, (0, 0, 0, 0, max(0, -lo), max(0, hi - z)))
        pred = predict(block[None])[0]
        if out is None:
            out = pred.new_zeros((pred.shape[0], z) + tuple(pred.shape[2:]))
        out[:, start:stop] = pred[:, halo : halo + stop - start]
    return out
