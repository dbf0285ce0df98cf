"""The joint semantic decoder (e_sem): a UNETR-style convolutional decoder on SAM's encoder.

It upsamples the image embedding (1/16 resolution) back to the input resolution in x2 stages and
predicts foreground logits; during finetuning it learns "union of all objects" (Alg. 1 lines
37-40) and is later the pretrained initialisation of the 2D semantic model (SPEC 3.6). It is saved
in its own file, because extra keys in the SAM checkpoint break the SAM tools.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3x3 conv + instance norm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """x2 transposed-conv upsampling followed by a conv block."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = conv_block(out_ch, out_ch)

    def forward(self, x):
        return self.conv(self.up(x))


class SemanticDecoder(nn.Module):
    """Embedding (B, in_channels, h, w) + input image (B, 3, 16h, 16w) -> logits (B, out_channels, 16h, 16w).

    Stages: conv block ``in_channels -> features[0]``, then ``log2(scale)`` upsampling blocks
    through ``features``; a conv block on the input image gives a full-resolution skip (as in
    UNETR) that is concatenated before the final conv block and 1x1 classifier.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 1, features=(512, 256, 128, 64), scale: int = 16):
        super().__init__()
        self.config = {"in_channels": int(in_channels), "out_channels": int(out_channels),
                       "features": [int(f) for f in features], "scale": int(scale)}
        n_up = int(round(math.log2(scale)))
        if 2**n_up != scale:
            raise ValueError(f"SemanticDecoder: scale must be a power of two, got {scale}")
        self.bottleneck = conv_block(in_channels, features[0])
        chans = [features[min(i, len(features) - 1)] for i in range(n_up + 1)]
        self.ups = nn.ModuleList(UpBlock(chans[i], chans[i + 1]) for i in range(n_up))
        self.image_skip = conv_block(3, chans[-1])
        self.fuse = conv_block(2 * chans[-1], chans[-1])
        self.head = nn.Conv2d(chans[-1], out_channels, kernel_size=1)

    def forward(self, embedding: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(embedding)
        for up in self.ups:
            x = up(x)
        x = self.fuse(torch.cat([x, self.image_skip(image)], dim=1))
        return self.head(x)


def decoder_for(sam, out_channels: int = 1) -> SemanticDecoder:
    """The decoder matching a SAM's embedding: paper widths for ViT models, small ones for tiny."""
    in_channels = sam.prompt_encoder.embed_dim
    scale = sam.image_encoder.img_size // sam.prompt_encoder.image_embedding_size[0]
    features = (512, 256, 128, 64) if in_channels >= 256 else (64, 32, 16, 16)
    return SemanticDecoder(in_channels, out_channels, features, scale)


def save_decoder(decoder: SemanticDecoder, state: dict, path) -> None:
    """Write ``{"config": ..., "state_dict": ...}`` (weights-only loadable) atomically."""
    from medpipe.files import save_torch

    save_torch({"config": decoder.config, "state_dict": state}, path)


def load_decoder(path) -> SemanticDecoder:
    """Rebuild a decoder saved by :func:`save_decoder` (strict keys; read weights-only)."""
    from medpipe.files import load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path}: not a medpipe semantic decoder file (needs 'config' and 'state_dict')")
    cfg = blob["config"]
    decoder = SemanticDecoder(cfg["in_channels"], cfg["out_channels"], cfg["features"], cfg["scale"])
    decoder.load_state_dict(blob["state_dict"], strict=True)
    return decoder
