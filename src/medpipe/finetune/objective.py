"""The training objective of Alg. 1: losses and one interactive iteration (docs/fidelity.md, "Finetuning").

One call of :func:`alg1_loss` is lines 5-35 of Alg. 1 for a batch whose image embeddings were
computed once: initial box or point prompt, the prediction, then ``n_steps`` correction
sub-iterations that add one positive and one negative point each (and optionally the previous
low-res mask), every sub-iteration contributing a Dice loss and an IoU-regression loss; the sum is
divided by the number of decoder passes, ``n_steps + 1`` (the reference's ``n_sub_iteration = 8``
is ``n_steps = 7``). The prompt rules themselves are :mod:`medpipe.prompts`, shared with
evaluation.

Masks may live in a smaller frame than the model input (``image_prep: resize`` keeps them at the
training image's 512 px while the encoder sees 1024 px): prompts drawn in the mask frame are
scaled to the input frame, and the logits are brought back as SAM's ``postprocess_masks`` does
(upsampled to the input size, then resized to the mask frame), so the loss is computed where the
reference computes it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medpipe import prompts
from medpipe.losses import pooled_dice_loss
from medpipe.models import batched_decoding

EPS = 1e-6
VALIDATION_KINDS = ("point", "box", "points", "box+points")


def dice_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared-denominator Dice loss per object and output: (N, M, H, W) vs (N, 1, H, W) -> (N, M).

    ``1 - 2 sum(p g) / (sum(p^2) + sum(g^2))``, the form of the reference code.
    """
    target = target.to(probs.dtype)
    inter = (probs * target).sum(dim=(-2, -1))
    denom = (probs * probs).sum(dim=(-2, -1)) + (target * target).sum(dim=(-2, -1))
    return 1.0 - 2.0 * inter / denom.clamp_min(EPS)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of binary predictions (N, M, H, W) with the target (N, 1, H, W) -> (N, M), float."""
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).sum(dim=(-2, -1)).float()
    union = (pred | target).sum(dim=(-2, -1)).float()
    return inter / union.clamp_min(EPS)


def step_losses(logits: torch.Tensor, iou_pred: torch.Tensor,
                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask and IoU loss of one (sub-)iteration, averaged over objects.

    ``logits`` (N, M, H, W) upscaled mask logits, ``iou_pred`` (N, M), ``target`` (N, 1, H, W).
    Mask loss: Dice loss of sigmoid(logits), the best (minimum) of the M outputs per object (M = 3
    for a single-point prompt, else 1). IoU loss: MSE between predicted IoU and the true IoU of
    the binarised masks (logits > 0), over all M outputs.
    """
    logits = logits.float()
    per_output = dice_loss(torch.sigmoid(logits), target)
    mask_loss = per_output.min(dim=1).values.mean()
    with torch.no_grad():
        true_iou = mask_iou(logits > 0, target)
    iou_loss = F.mse_loss(iou_pred.float(), true_iou)
    return mask_loss, iou_loss


def _to_input_frame(prompt: dict, scale: float) -> dict:
    """Prompt coordinates of the mask frame in the model's input frame (SAM's ``apply_coords``)."""
    if scale == 1.0:
        return prompt
    scaled = dict(prompt)
    for key in ("points", "boxes"):
        if prompt.get(key) is not None:
            scaled[key] = np.asarray(prompt[key], dtype=np.float64) * scale
    return scaled


def decode(sam, embedding: torch.Tensor, prompt: dict, mask_input, multimask: bool, out_size: int):
    """Prompt-encode and mask-decode the objects of one image; logits brought to ``out_size``.

    ``embedding`` (C, h, w) is one image's embedding, computed once and reused for all objects and
    sub-iterations; ``prompt`` is in the ``out_size`` frame (the masks' frame). Returns
    ``(logits (N, M, S, S), low_res (N, M, h', w'), iou_pred (N, M))``.
    """
    input_size = int(sam.image_encoder.img_size)
    points, boxes = prompts.as_torch_prompts(_to_input_frame(prompt, input_size / out_size), embedding.device)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    low_res, iou_pred = sam.mask_decoder(
        image_embeddings=embedding[None],
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    logits = F.interpolate(low_res.float(), (input_size, input_size), mode="bilinear", align_corners=False)
    if out_size != input_size:
        logits = F.interpolate(logits, (out_size, out_size), mode="bilinear", align_corners=False)
    return logits, low_res, iou_pred


def alg1_loss(
    sam,
    embeddings: torch.Tensor,
    masks: torch.Tensor,
    rngs: list[np.random.Generator],
    *,
    use_box: bool,
    use_mask: bool,
    n_steps: int,
    box_distortion: float,
) -> dict[str, torch.Tensor]:
    """The interactive part of one Alg. 1 iteration for a batch, without host round trips.

    ``embeddings`` (B, C, h, w) from the image encoder (computed once), ``masks`` (B, K, S, S)
    object masks in the mask frame, ``rngs`` one generator per image (prompt draws of an image do
    not depend on which process or batch slot it lands in, so a DDP run and a single process draw
    the same prompts). ``use_box`` / ``use_mask`` are this iteration's draws of ``p_box`` /
    ``p_mask``. Returns the averaged ``loss`` and its ``mask_loss`` / ``iou_loss`` terms (tensors).

    The rules are :mod:`medpipe.prompts`' (the device versions: each image's numpy generator seeds
    one ``torch.Generator``, which draws that image's points on the device), the numbers those of
    SAM's prompt encoder and mask decoder (:mod:`medpipe.models.batched_decoding`): the B x K objects
    go through one decoder call per pass, the dense positional encoding is computed once, and the
    logits reach the mask frame through a fixed resize matrix (SAM's ``postprocess_masks`` resizes,
    as matrix products). Nothing here waits for the device: no ``nonzero``, ``item`` or host copy.
    """
    count, size = masks.shape[1], masks.shape[-1]
    device = embeddings.device
    input_size = int(sam.image_encoder.img_size)
    scale = input_size / size
    gens = prompts.device_generators(rngs, device)
    gt = masks.flatten(0, 1).bool()  # (N, S, S), objects of image b at rows b*K .. b*K + K-1
    rings = prompts.bbox_rings(gt)
    state = prompts.initial_prompts_device(gt, prompts.uniforms(gens, count, 4, device), use_box=use_box,
                                     box_distortion=box_distortion)
    low_size = tuple(4 * s for s in sam.prompt_encoder.image_embedding_size)
    mask_in = prompts.empty_mask_prompt(gt.shape[0], low_size, device) if use_mask else None
    per_object = embeddings[:, None].expand(-1, count, -1, -1, -1).flatten(0, 1)
    image_pe = batched_decoding.dense_pe(sam.prompt_encoder)
    sizes = (low_size[0], input_size) + ((size,) if size != input_size else ())
    target = gt[:, None].float()
    mask_total = embeddings.new_zeros((), dtype=torch.float32)
    iou_total = embeddings.new_zeros((), dtype=torch.float32)
    for step in range(n_steps + 1):
        points = state["points"] * scale if state["points"] is not None else None
        boxes = state["boxes"] * scale if state["boxes"] is not None else None
        sparse, dense = batched_decoding.encode_prompts(sam.prompt_encoder, points, state["labels"], boxes, mask_in,
                                                        gt.shape[0])
        multimask = boxes is None and points is not None and points.shape[1] == 1
        low_res, iou_pred = batched_decoding.decode_objects(sam.mask_decoder, per_object, image_pe, sparse, dense,
                                                            multimask)
        logits = batched_decoding.resize_logits(low_res, sizes)
        mask_loss, iou_loss = step_losses(logits, iou_pred, target)
        mask_total = mask_total + mask_loss
        iou_total = iou_total + iou_loss
        if step == n_steps:
            break
        with torch.no_grad():  # Alg. 1 lines 26-33: corrections from the best predicted mask
            best_logits, _ = prompts.select_best(logits, iou_pred)
            coords, labels = prompts.correction_points_device(gt, best_logits[:, 0] > 0,
                                                              prompts.uniforms(gens, count, 2, device), rings)
            state = prompts.add_correction_points_device(state, coords, labels)
            if use_mask:
                low_best, _ = prompts.select_best(low_res, iou_pred)
                mask_in = prompts.mask_prompt_from(low_best)
    steps = n_steps + 1
    mask_total, iou_total = mask_total / steps, iou_total / steps
    return {"loss": mask_total + iou_total, "mask_loss": mask_total, "iou_loss": iou_total}


def alg1_loss_reference(
    sam,
    embeddings: torch.Tensor,
    masks: torch.Tensor,
    rngs: list[np.random.Generator],
    *,
    use_box: bool,
    use_mask: bool,
    n_steps: int,
    box_distortion: float,
) -> dict[str, torch.Tensor]:
    """The interactive part of one Alg. 1 iteration, prompts drawn on the host (the former loop).

    Kept for cross-checks and the old-against-new benchmark: numpy prompt draws per object and pass
    (the predictions copied to the host), SAM's own prompt encoder and one decoder call per image.
    :func:`alg1_loss` is the training loop.

    ``embeddings`` (B, C, h, w) from the image encoder (computed once), ``masks`` (B, K, S, S)
    object masks at the input resolution, ``rngs`` one generator per image (prompt draws of an
    image do not depend on which process or batch slot it lands in, so a DDP run and a single
    process draw the same prompts). ``use_box`` / ``use_mask`` are this iteration's draws of
    ``p_box`` / ``p_mask``. Returns the averaged ``loss`` and its ``mask_loss`` / ``iou_loss`` terms.
    """
    batch, _, size = masks.shape[0], masks.shape[1], masks.shape[-1]
    gt_np = masks.detach().cpu().numpy().astype(bool)
    state = [prompts.initial_prompts(gt_np[b], rngs[b], use_box=use_box, box_distortion=box_distortion)
             for b in range(batch)]
    low_size = tuple(4 * s for s in sam.prompt_encoder.image_embedding_size)
    mask_in = [prompts.empty_mask_prompt(masks.shape[1], low_size, embeddings.device) if use_mask else None] * batch
    mask_total = embeddings.new_zeros((), dtype=torch.float32)
    iou_total = embeddings.new_zeros((), dtype=torch.float32)
    target = masks[:, :, None].float()
    for step in range(n_steps + 1):
        outputs = [decode(sam, embeddings[b], state[b], mask_in[b], prompts.uses_multimask(state[b]), size)
                   for b in range(batch)]
        logits = torch.cat([o[0] for o in outputs])
        iou_pred = torch.cat([o[2] for o in outputs])
        mask_loss, iou_loss = step_losses(logits, iou_pred, target.flatten(0, 1))
        mask_total = mask_total + mask_loss
        iou_total = iou_total + iou_loss
        if step == n_steps:
            break
        with torch.no_grad():  # Alg. 1 lines 26-33: corrections from the best predicted mask
            for b, (logit_b, low_b, iou_b) in enumerate(outputs):
                best_logits, best = prompts.select_best(logit_b, iou_b)
                pred = (best_logits[:, 0] > 0).cpu().numpy()
                state[b] = prompts.add_correction_points(state[b], gt_np[b], pred, rngs[b])
                if use_mask:
                    low_best, _ = prompts.select_best(low_b, iou_b)
                    mask_in[b] = prompts.mask_prompt_from(low_best)
    steps = n_steps + 1
    mask_total, iou_total = mask_total / steps, iou_total / steps
    return {"loss": mask_total + iou_total, "mask_loss": mask_total, "iou_loss": iou_total}


def validation_prompts(masks: np.ndarray, rng: np.random.Generator, kind: str) -> dict:
    """Fixed prompt types the validation cycles through (docs/fidelity.md): point, box, points, box+points.

    ``points``: 3 positive points inside the object and 2 negatives from the 3 px bbox ring (with
    the background fallback of :func:`medpipe.prompts.correction_points`); ``box+points``: the
    tight box plus one positive and one negative point. Boxes are not distorted.
    """
    if kind not in VALIDATION_KINDS:
        raise ValueError(f"unknown validation prompt kind {kind!r}; expected one of {VALIDATION_KINDS}")
    if kind in ("point", "box"):
        return prompts.initial_prompts(masks, rng, use_box=kind == "box")
    empty = np.zeros_like(masks, dtype=bool)
    if kind == "box+points":
        return prompts.add_correction_points(prompts.initial_prompts(masks, rng, use_box=True), masks, empty, rng)
    state = prompts.initial_prompts(masks, rng, use_box=False)
    state = prompts.add_correction_points(state, masks, empty, rng)
    state = prompts.add_correction_points(state, masks, empty, rng)
    return state


@torch.no_grad()
def validation_dice_loss(sam, embeddings: torch.Tensor, masks: torch.Tensor, rngs, kind: str) -> torch.Tensor:
    """Mean Dice loss (best of the outputs) of one prompt kind over a batch: the validation metric."""
    gt_np = masks.cpu().numpy().astype(bool)
    losses = []
    for b in range(masks.shape[0]):
        prompt = validation_prompts(gt_np[b], rngs[b], kind)
        logits, _, _ = decode(sam, embeddings[b], prompt, None, prompts.uses_multimask(prompt), masks.shape[-1])
        losses.append(dice_loss(torch.sigmoid(logits.float()), masks[b][:, None]).min(dim=1).values)
    return torch.cat(losses).mean()


def semantic_outputs(decoder, embeddings: torch.Tensor, size: int) -> torch.Tensor:
    """The joint decoder's sigmoid outputs (B, 2, size, size): background and foreground channels.

    The decoder predicts at the input resolution; like the reference UNETR's ``postprocess_masks``
    the activations are resized (bilinear) to the frame of the targets.
    """
    probs = decoder(embeddings)
    if probs.shape[-1] != size:
        probs = F.interpolate(probs.float(), (size, size), mode="bilinear", align_corners=False)
    return probs


def semantic_dice_loss(probs: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """Loss of the joint semantic decoder (Alg. 1 lines 37-40, the reference's e_sem).

    ``probs`` (B, 2, S, S) sigmoid outputs; ``foreground`` (B, 1, S, S) the union of all objects of
    the image (every object, not only the ``n_obj`` sampled for the interactive loss). The target
    channels are background (no object) and foreground; torch-em's batch-pooled Dice loss of the two,
    summed (:func:`medpipe.losses.pooled_dice_loss`).
    """
    foreground = foreground.float()
    return pooled_dice_loss(probs, torch.cat([1.0 - foreground, foreground], dim=1))
