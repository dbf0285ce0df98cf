"""SAM's prompt encoder and mask decoder over many images' objects at once, without host syncs.

``segment_anything``'s ``PromptEncoder.forward`` adds the label embeddings through boolean-mask
indexing (``emb[labels == 0] += ...``: a ``nonzero``, i.e. a host sync on CUDA, six per call), and
``MaskDecoder.predict_masks`` repeats one image's embedding for all prompts, so objects of
different images need one call per image. For training (Alg. 1) these functions compute the same
numbers over the modules' own parameters:

- :func:`encode_prompts`: the sparse and dense prompt embeddings, label embeddings chosen with
  ``torch.where``; positional encodings in fp32 even under bf16 autocast (a 1 px step in the
  1024 px frame must stay visible to the encoding);
- :func:`dense_pe`: the image positional encoding (fp32), computed once per iteration;
- :func:`decode_objects`: the mask decoder for N objects whose image embeddings are given per
  object (an image's embedding expanded over its objects, whose backward is a plain sum);
- :func:`resize_matrix`: bilinear resizing as a fixed matrix, so the loss's upsampling is two
  matrix products (deterministic backward on CUDA, unlike ``upsample_bilinear2d``'s).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def embed_coords(prompt_encoder, coords: torch.Tensor) -> torch.Tensor:
    """Random-Fourier positional encoding (fp32) of pixel coordinates ``(x, y)`` (..., 2) in the input frame."""
    height, width = prompt_encoder.input_image_size
    pe_layer = prompt_encoder.pe_layer
    with _no_autocast(coords.device):
        shifted = coords.float() + 0.5  # pixel centres, as SAM
        normalised = torch.stack([shifted[..., 0] / width, shifted[..., 1] / height], dim=-1)
        return pe_layer._pe_encoding(normalised)


def encode_prompts(prompt_encoder, points: torch.Tensor | None, labels: torch.Tensor | None,
                   boxes: torch.Tensor | None, masks: torch.Tensor | None, count: int):
    """``PromptEncoder.forward`` for ``count`` objects: ``(sparse (N, P, C), dense (N, C, h, w))``.

    ``points`` (N, P, 2) / ``labels`` (N, P) (1 positive, 0 negative, -1 no point), ``boxes``
    (N, 4), ``masks`` (N, 1, 4h, 4w) low-res logits, each in the model's input frame or ``None``.
    Without a box a padding point (label -1) is appended, as SAM does.
    """
    weights = prompt_encoder.point_embeddings
    parts = []
    if points is not None:
        if boxes is None:
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        emb = embed_coords(prompt_encoder, points)
        lab = labels[..., None]
        not_a_point = prompt_encoder.not_a_point_embed.weight.float()
        emb = torch.where(lab == -1, not_a_point,
                          torch.where(lab == 0, emb + weights[0].weight.float(),
                                      torch.where(lab == 1, emb + weights[1].weight.float(), emb)))
        parts.append(emb)
    if boxes is not None:
        corners = embed_coords(prompt_encoder, boxes.reshape(-1, 2, 2))
        parts.append(corners + torch.cat([weights[2].weight, weights[3].weight]).float())
    dim = prompt_encoder.embed_dim
    device = prompt_encoder.no_mask_embed.weight.device
    sparse = torch.cat(parts, dim=1) if parts else torch.empty((count, 0, dim), device=device)
    if masks is not None:
        dense = prompt_encoder.mask_downscaling(masks)
    else:
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            count, -1, *prompt_encoder.image_embedding_size)
    return sparse, dense


def dense_pe(prompt_encoder) -> torch.Tensor:
    """``PromptEncoder.get_dense_pe()`` in fp32 (1, C, h, w): once per iteration, shared by every pass."""
    with _no_autocast(prompt_encoder.no_mask_embed.weight.device):
        return prompt_encoder.get_dense_pe().float()


def decode_objects(mask_decoder, embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                   dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` for N objects with one image embedding each (N, C, h, w).

    Returns ``(low_res (N, M, 4h, 4w), iou_pred (N, M))``; M = 3 with ``multimask`` else 1, the
    output selection of ``segment_anything``.
    """
    d = mask_decoder
    tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
    tokens = tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat((tokens.to(sparse.dtype), sparse), dim=1)
    src = embeddings + dense
    pos_src = image_pe.expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = d.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1: 1 + d.num_mask_tokens, :]
    upscaled = d.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(d.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = d.iou_prediction_head(iou_token_out)
    chosen = slice(1, None) if multimask else slice(0, 1)
    return masks[:, chosen], iou_pred[:, chosen]


@lru_cache(maxsize=16)
def _resize_matrix_cpu(sizes: tuple[int, ...]) -> torch.Tensor:
    matrix = torch.eye(sizes[0], dtype=torch.float64)
    for size in sizes[1:]:
        # row i of the result: how input pixel i spreads over the output (1D linear = one axis of bilinear)
        step = F.interpolate(torch.eye(matrix.shape[0], dtype=torch.float64)[None], size=size, mode="linear",
                             align_corners=False)[0]
        matrix = step.T @ matrix
    return matrix.float()


def resize_matrix(sizes: tuple[int, ...], device) -> torch.Tensor:
    """(sizes[-1], sizes[0]) matrix of consecutive bilinear resizes (``align_corners=False``, no
    antialias) of one axis: ``A @ x @ A.T`` equals ``F.interpolate`` through each size in turn."""
    return _resize_matrix_cpu(tuple(int(s) for s in sizes)).to(device)


def resize_logits(low_res: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Low-res logits (N, M, h, w) brought through ``sizes`` (h first) by two fp32 matrix products."""
    if len(sizes) < 2:
        return low_res.float()
    matrix = resize_matrix(sizes, low_res.device)
    with _no_autocast(low_res.device):
        return matrix @ low_res.float() @ matrix.T
