"""SAM-UNETR 2D: SAM's image encoder + the UNETR decoder of the joint semantic head (e_sem).

As in the reference (medico-sam ``get_semantic_sam_model`` over micro-sam ``get_unetr``), the decoder
is the class finetuning trains as e_sem (``medpipe.models.sem_decoder``) with one sigmoid output per
class (class 0 = background); a pretrained e_sem decoder initialises every weight and buffer except
the 1x1 classifier ``out_conv``, which always starts fresh, even when its shape would fit
(docs/fidelity.md, "Semantic segmentation").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medpipe.models.posemb import resize_encoder
from medpipe.models.sem_decoder import SCALE, SemanticDecoder, decoder_for, load_decoder

log = logging.getLogger(__name__)

#: decoder parameters that are never taken from a pretrained decoder (the classifier)
FRESH_PREFIX = "out_conv."


class SamUnetr2D(nn.Module):
    """(B, 3, S, S) SAM-normalised images -> (B, n_classes, S, S) outputs (class 0 = background),
    sigmoid activations as in the reference (logits with ``activation=None``)."""

    def __init__(self, encoder: nn.Module, decoder: SemanticDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def input_size(self) -> int:
        return int(self.encoder.img_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


def init_decoder_from_file(decoder: SemanticDecoder, path) -> list[str]:
    """Copy every pretrained e_sem decoder tensor into ``decoder`` except the classifier.

    Returns the keys left at their fresh init. The decoder architecture must match (else the error
    names the file and the differing setting): a decoder from another backbone cannot be reused.
    """
    pretrained = load_decoder(path)
    for key in ("in_channels", "initial_features", "upsampling", "scale"):
        if pretrained.config.get(key, SCALE) != decoder.config[key]:
            raise ValueError(f"{path}: decoder {key} {pretrained.config.get(key, SCALE)} does not match the model's "
                             f"{decoder.config[key]}")
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith(FRESH_PREFIX)}
    skipped = sorted(set(decoder.state_dict()) - set(state))
    decoder.load_state_dict(state, strict=False)
    log.info("decoder initialised from %s (fresh: %s)", path, ", ".join(skipped) or "none")
    return skipped


def build_sam_unetr(sam, n_classes: int, decoder_file=None, input_size: int | None = None,
                    upsampling: str = "bilinear", activation: str | None = "sigmoid") -> SamUnetr2D:
    """SAM-UNETR on ``sam``'s encoder; ``n_classes`` includes background.

    ``decoder_file`` (an exported ``<run>.decoder.pth``) initialises the decoder, else it is random
    with ``upsampling`` (the reference: bilinear). ``input_size`` other than the encoder's own
    interpolates its positional embeddings. ``activation``: the outputs' (sigmoid in the reference).
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must count background and at least one class, got {n_classes}")
    encoder = sam.image_encoder
    if input_size and input_size != encoder.img_size:
        resize_encoder(encoder, input_size)
    if decoder_file is not None:  # the file's own upsampling kind: the pretrained weights define the layout
        upsampling = load_decoder(decoder_file).config["upsampling"]
    decoder = decoder_for(sam, out_channels=n_classes, upsampling=upsampling, activation=activation)
    if decoder_file is not None:
        init_decoder_from_file(decoder, decoder_file)
    return SamUnetr2D(encoder, decoder)
