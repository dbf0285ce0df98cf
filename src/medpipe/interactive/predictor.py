"""Run SAM's prompt encoder and mask decoder on a precomputed image embedding, many objects per call.

``segment_anything.SamPredictor`` couples one image embedding to one prompt set and recomputes
nothing only as long as the caller keeps the predictor alive; the evaluation instead keeps the
embeddings in an on-disk cache (``embeddings.py``) and decodes up to ``max_batch`` objects per
decoder call against one embedding. The coordinate handling (``ResizeLongestSide``), the
low-resolution mask logits and the upscaling (``Sam.postprocess_masks``) are SAM's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from medpipe import prompts
from medpipe.models.transforms import pixel_stats, resized_shape, sam_input

#: the reference evaluation prompts up to this many objects of an image in one decoder call
MAX_BATCH = 32
#: micro-sam versions whose prompt rules differ (``interactive.micro_sam_rules``, docs/fidelity.md)
MICRO_SAM_RULES = ("paper", "v1.8")


@dataclass
class Prediction:
    """Decoder output for N objects: binary masks at image size, best low-res logits, predicted IoU."""

    masks: np.ndarray  # (N, H, W) bool
    low_res: torch.Tensor  # (N, 1, h, w) logits of the chosen output (the next mask prompt)
    iou: np.ndarray  # (N,) predicted IoU of the chosen output


class BatchedPredictor:
    """Encode images and decode batched prompts with one ``segment_anything.Sam`` model."""

    def __init__(self, sam: Sam, device="cpu", max_batch: int = MAX_BATCH):
        self.sam = sam.to(device).eval()
        self.device = torch.device(device)
        self.max_batch = int(max_batch)
        self.img_size = int(sam.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        self.mask_input_size = tuple(sam.prompt_encoder.mask_input_size)
        self.pixels = pixel_stats(sam)  # the model's own input normalisation (LiteMedSAM: [0, 1])

    @torch.no_grad()
    def encode(self, slices_uint8: np.ndarray) -> np.ndarray:
        """Image embeddings (S, C, h, w) float32 of (S, H, W, 3) uint8 slices, one encoder pass each."""
        out = []
        for image in slices_uint8:
            x = sam_input(image, self.img_size, self.pixels)[None].to(self.device)
            out.append(self.sam.image_encoder(x).float().cpu().numpy()[0])
        return np.stack(out)

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        return resized_shape(tuple(original_size), self.img_size)

    def mask_logits_from_binary(self, masks: np.ndarray, rules: str = "paper", eps: float = 1e-3) -> torch.Tensor:
        """Binary masks (N, H, W) as low-res mask prompts (N, 1, h, w) (the ``mask`` projections).

        As micro-sam's ``_compute_logits_from_mask``, whose resize is ``segment_anything``'s
        ``ResizeLongestSide.apply_image_torch``: that reads the batch and channel axes as the image
        size, so every mask is stretched to the full low-res size, ignoring its aspect ratio, and
        never padded (docs/fidelity.md). ``paper`` (micro-sam <= 1.7): logits +-logit(1 - eps) are
        resized (bilinear, anti-aliased); ``v1.8``: the binary mask is resized, then thresholded at
        0.5 to +-logit(1 - eps).
        """
        if rules not in MICRO_SAM_RULES:
            raise ValueError(f"unknown micro_sam_rules {rules!r}; expected one of {MICRO_SAM_RULES}")
        masks = torch.as_tensor(np.asarray(masks, dtype=np.float32), device=self.device)
        value = float(np.log((1 - eps) / eps))
        source = ((masks * 2 - 1) * value if rules == "paper" else masks)[:, None]
        if tuple(source.shape[-2:]) != self.mask_input_size:
            source = F.interpolate(source, self.mask_input_size, mode="bilinear", align_corners=False, antialias=True)
        if rules == "paper":
            return source
        return torch.where(source > 0.5, value, -value)

    @torch.no_grad()
    def predict(
        self,
        embedding,
        original_size: tuple[int, int],
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Masks for N objects from prompts in image pixel coordinates (``(x, y)``, xyxy boxes).

        ``embedding`` is (C, h, w) (numpy or tensor). With ``multimask`` the 3-mask head is used
        and, per object, the output with the highest predicted IoU is kept. Without any prompt
        (as the reference's propagation does after an empty mask) SAM predicts for one object.
        """
        if points is not None:
            n = len(points)
        elif boxes is not None:
            n = len(boxes)
        else:
            n = len(mask_input) if mask_input is not None else 1
        emb = torch.as_tensor(np.asarray(embedding), device=self.device)[None].float()
        input_size = self.input_size(original_size)
        masks, low_res, ious = [], [], []
        for start in range(0, n, self.max_batch):
            part = slice(start, min(start + self.max_batch, n))
            point_arg = None
            if points is not None:
                coords = torch.as_tensor(np.asarray(points[part], dtype=np.float32), device=self.device)
                coords = self.transform.apply_coords_torch(coords, tuple(original_size))
                point_arg = (coords, torch.as_tensor(np.asarray(labels[part]), dtype=torch.int64, device=self.device))
            box_arg = None
            if boxes is not None:
                box = torch.as_tensor(np.asarray(boxes[part], dtype=np.float32), device=self.device)
                box_arg = self.transform.apply_boxes_torch(box, tuple(original_size))
            mask_arg = mask_input[part].to(self.device) if mask_input is not None else None
            sparse, dense = self.sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=mask_arg)
            low, iou = self.sam.mask_decoder(
                image_embeddings=emb,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            low, best = prompts.select_best(low, iou)
            iou = torch.gather(iou, 1, best[:, None])[:, 0]
            full = self.sam.postprocess_masks(low, input_size, tuple(original_size))
            masks.append((full[:, 0] > self.sam.mask_threshold).cpu().numpy())
            low_res.append(low)
            ious.append(iou.cpu().numpy())
        return Prediction(np.concatenate(masks), torch.cat(low_res), np.concatenate(ious))
