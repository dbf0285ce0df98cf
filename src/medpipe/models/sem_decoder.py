"""The convolutional segmentation decoder on SAM's encoder: e_sem in finetuning, SAM-UNETR after it.

The reference trains one decoder design in both places: torch-em's UNETR without encoder skip
connections (``use_skip_connection=False``), as micro-sam's ``get_unetr`` builds it. The e_sem
decoder of finetuning (2 sigmoid channels: background, foreground) becomes the initialisation of
the SAM-UNETR decoder (one sigmoid channel per class), all weights but the 1x1 classifier. This
module is that design, written from its description (docs/fidelity.md, "Semantic segmentation"):

- every skip comes from the image embedding alone, through a chain of x2 "deconvolution" blocks
  (upsample, 3x3 conv, batch norm, ReLU): z9, z6, z3, z0 at 2, 4, 8 and 16 times the embedding's
  resolution, with F0..F3 channels (F = 8, 4, 2, 1 x ``initial_features``);
- a conv block turns the embedding into F0 channels; three decoder levels each upsample (F[i] ->
  F[i+1]) and concatenate the *middle* F[i+1] channels of the skip of that level (the reference
  centre-crops the skip tensor on every axis, channels included), then a conv block F[i] -> F[i+1];
- one more x2 upsampling reaches the input resolution, z0 is concatenated and a last conv block and
  a 1x1 classifier give the outputs, followed by the final activation (sigmoid).

That is the layout for SAM's ViTs, whose embedding is 1/16 of the input. For an encoder whose
embedding is 1/``scale`` of its input (LiteMedSAM's TinyViT: 64 x 64 at 256 px, scale 4) the same
design has log2(scale) x2 steps, so the outputs come at the input resolution: deconvolution blocks
``deconv1..deconvL`` (the last gives z0), L - 1 decoder levels and channels F * 2^(L-1) ... F.
(torch-em's UNETR always upsamples 16 times and then resizes the outputs to the encoder's input
size: for scale 4 that decodes at 1024 px to predict 256 px; docs/fidelity.md.)

Conv blocks normalise *before* each convolution (instance norm without affine parameters, 3x3
conv, ReLU, twice). Upsampling is bilinear x2 followed by a 1x1 conv (``upsampling: bilinear``, the
reference since torch-em 2025-06) or a 2x2 transposed conv with stride 2 (``transposed``, older
torch-em). Submodule names follow the reference's state-dict layout, so a reference
``decoder_state`` loads here as it is. The decoder is saved in its own file: extra keys in the SAM
checkpoint break the SAM tools.
"""

from __future__ import annotations

import torch
from torch import nn

UPSAMPLING = ("bilinear", "transposed")
ACTIVATIONS = ("sigmoid", None)
#: ViT patch size of every SAM encoder: the decoder upsamples the embedding 16 times (4 x2 steps)
SCALE = 16
#: embedding-to-input scales the decoder supports (2 to 4 x2 steps)
SCALES = (4, 8, 16)


class Conv3x3(nn.Module):
    """A 3x3 convolution with padding 1 (kept as a module named ``block``, the reference's key layout)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)

    def forward(self, x):
        return self.block(x)


class BilinearUp(nn.Module):
    """x2 bilinear upsampling, then a 1x1 conv from ``in_ch`` to ``out_ch`` channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class TransposedUp(nn.Module):
    """x2 upsampling by a 2x2 transposed convolution with stride 2."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)

    def forward(self, x):
        return self.block(x)


def upsampler(kind: str, in_ch: int, out_ch: int) -> nn.Module:
    if kind not in UPSAMPLING:
        raise ValueError(f"unknown decoder upsampling {kind!r}; expected one of {UPSAMPLING}")
    return BilinearUp(in_ch, out_ch) if kind == "bilinear" else TransposedUp(in_ch, out_ch)


class ConvBlock(nn.Module):
    """(instance norm, 3x3 conv, ReLU) twice; the norm (no affine parameters) precedes each conv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        return self.block(x)


class DeconvBlock(nn.Module):
    """x2 upsampling ``in_ch -> out_ch``, then 3x3 conv, batch norm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kind: str):
        super().__init__()
        self.block = nn.Sequential(upsampler(kind, in_ch, out_ch), Conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch),
                                   nn.ReLU(inplace=True))

    def forward(self, x):
        return self.block(x)


def middle_channels(skip: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The centre crop of ``skip`` to the shape of ``like`` on every axis (channels included)."""
    index = []
    for have, want in zip(skip.shape, like.shape):
        if have < want:
            raise ValueError(f"skip of shape {tuple(skip.shape)} is smaller than {tuple(like.shape)}")
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return skip[tuple(index)]


class DecoderLevels(nn.Module):
    """The three decoder levels: upsample F[i] -> F[i+1], concatenate the skip's middle channels, conv block."""

    def __init__(self, features: list[int], kind: str):
        super().__init__()
        self.samplers = nn.ModuleList(upsampler(kind, a, b) for a, b in zip(features[:-1], features[1:]))
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(features[:-1], features[1:]))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for sampler, block, skip in zip(self.samplers, self.blocks, skips):
            x = sampler(x)
            x = block(torch.cat([x, middle_channels(skip, x)], dim=1))
        return x


class SemanticDecoder(nn.Module):
    """Image embedding (B, in_channels, h, w) -> outputs (B, out_channels, scale h, scale w) after ``activation``.

    ``config`` (in_channels, out_channels, initial_features, upsampling, activation, scale) rebuilds it.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 2, initial_features: int = 64,
                 upsampling: str = "bilinear", activation: str | None = "sigmoid", scale: int = SCALE):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown decoder activation {activation!r}; expected one of {ACTIVATIONS}")
        if scale not in SCALES:
            raise ValueError(f"the semantic decoder upsamples x{' / x'.join(map(str, SCALES))}, not x{scale}")
        self.config = {"in_channels": int(in_channels), "out_channels": int(out_channels),
                       "initial_features": int(initial_features), "upsampling": upsampling, "activation": activation,
                       "scale": int(scale)}
        levels = int(scale).bit_length() - 1
        f = [initial_features * 2 ** (levels - 1 - i) for i in range(levels)]
        self.n_deconv = levels
        for i in range(levels):  # deconv1 .. deconvL: the reference's attribute names (state-dict keys)
            setattr(self, f"deconv{i + 1}", DeconvBlock(in_channels if i == 0 else f[i - 1], f[i], upsampling))
        self.base = ConvBlock(in_channels, f[0])
        self.decoder = DecoderLevels(f, upsampling)
        self.deconv_out = upsampler(upsampling, f[-1], f[-1])
        self.decoder_head = ConvBlock(2 * f[-1], f[-1])
        self.out_conv = nn.Conv2d(f[-1], out_channels, kernel_size=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        skips, z = [], embedding
        for i in range(self.n_deconv):
            z = getattr(self, f"deconv{i + 1}")(z)
            skips.append(z)
        x = self.decoder(self.base(embedding), skips[:-1])
        x = self.decoder_head(torch.cat([self.deconv_out(x), skips[-1]], dim=1))
        x = self.out_conv(x)
        return torch.sigmoid(x) if self.config["activation"] == "sigmoid" else x


def decoder_for(sam, out_channels: int = 2, upsampling: str = "bilinear",
                activation: str | None = "sigmoid") -> SemanticDecoder:
    """The decoder matching a SAM's embedding: the reference's widths (64 ... 512) on a 256-channel
    ViT neck, a quarter of the embedding width as ``initial_features`` in general (16 for the tiny SAM),
    with as many x2 steps as bring the embedding to the input size (4 for ViT, 2 for LiteMedSAM)."""
    in_channels = sam.prompt_encoder.embed_dim
    scale = sam.prompt_encoder.input_image_size[0] // sam.prompt_encoder.image_embedding_size[0]
    if scale not in SCALES:
        raise ValueError(f"the semantic decoder upsamples x{' / x'.join(map(str, SCALES))}; this encoder's "
                         f"embedding is 1/{scale} of its input")
    return SemanticDecoder(in_channels, out_channels, max(in_channels // 4, 1), upsampling, activation, scale)


def save_decoder(decoder: SemanticDecoder, state: dict, path) -> None:
    """Write ``{"config": ..., "state_dict": ...}`` (weights-only loadable) atomically."""
    from medpipe.files import save_torch

    save_torch({"config": decoder.config, "state_dict": state}, path)


def decoder_from_config(config: dict, where) -> SemanticDecoder:
    """A decoder built from a saved ``config``; a config of another layout is named as such."""
    expected = {"in_channels", "out_channels", "initial_features", "upsampling", "activation"}
    if set(config) - {"scale"} != expected:  # scale: absent in files of ViT decoders written before it existed
        raise ValueError(f"{where}: decoder config has keys {sorted(config)}, expected {sorted(expected | {'scale'})} "
                         "(a decoder of an older medpipe layout: rerun the finetune run and export it again)")
    return SemanticDecoder(**config)


def load_decoder(path) -> SemanticDecoder:
    """Rebuild a decoder saved by :func:`save_decoder` (strict keys; read weights-only)."""
    from medpipe.files import load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path}: not a medpipe semantic decoder file (needs 'config' and 'state_dict')")
    decoder = decoder_from_config(blob["config"], path)
    decoder.load_state_dict(blob["state_dict"], strict=True)
    return decoder
