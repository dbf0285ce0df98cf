"""SAM-UNETR 2D (SPEC 3.6): SAM's image encoder + the UNETR-like decoder of the joint semantic head.

The decoder class is the one finetuning trains as e_sem (``medpipe.models.sem_decoder``), so a
decoder pretrained there loads here weight for weight; only its 1x1 classifier differs (one
foreground channel there, one channel per class here) and is freshly initialised.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medpipe.models.posemb import resize_encoder
from medpipe.models.sem_decoder import SemanticDecoder, decoder_for, load_decoder

log = logging.getLogger(__name__)

DECODER_INITS = ("random", "pretrained")


class SamUnetr2D(nn.Module):
    """(B, 3, S, S) SAM-normalised images -> (B, n_classes, S, S) logits (class 0 = background)."""

    def __init__(self, encoder: nn.Module, decoder: SemanticDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def input_size(self) -> int:
        return int(self.encoder.img_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images), images)


def init_decoder_from_file(decoder: SemanticDecoder, path) -> list[str]:
    """Copy every pretrained e_sem decoder weight into ``decoder`` except a classifier of another width.

    Returns the keys left at their fresh init. The decoder architecture must match (else the error
    names the file and the differing setting): a decoder from another backbone cannot be reused.
    """
    pretrained = load_decoder(path)
    for key in ("in_channels", "features", "scale"):
        if pretrained.config[key] != decoder.config[key]:
            raise ValueError(f"{path}: decoder {key} {pretrained.config[key]} does not match the model's "
                             f"{decoder.config[key]}")
    own = decoder.state_dict()
    state = {k: v for k, v in pretrained.state_dict().items() if own[k].shape == v.shape}
    skipped = sorted(set(own) - set(state))
    decoder.load_state_dict(state, strict=False)
    log.info("decoder initialised from %s (fresh: %s)", path, ", ".join(skipped) or "none")
    return skipped


def build_sam_unetr(sam, n_classes: int, decoder_file=None, input_size: int | None = None) -> SamUnetr2D:
    """SAM-UNETR on ``sam``'s encoder; ``n_classes`` includes background.

    ``decoder_file`` (an exported ``<run>.decoder.pth``) initialises the decoder, else it is random.
    ``input_size`` other than the encoder's own interpolates its positional embeddings.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must count background and at least one class, got {n_classes}")
    encoder = sam.image_encoder
    if input_size and input_size != encoder.img_size:
        resize_encoder(encoder, input_size)
    decoder = decoder_for(sam, out_channels=n_classes)
    if decoder_file is not None:
        init_decoder_from_file(decoder, decoder_file)
    return SamUnetr2D(encoder, decoder)
