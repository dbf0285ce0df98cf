"""The torch methods as (model, batch conversion, whole-case prediction) triples.

SAM-UNETR with ``image_prep: resize`` (the reference, docs/fidelity.md) sees whole images: in
training each is resized (longest side) to the SAM input size and zero-padded to a centred square,
at test time the whole case goes through SAM's own transform (resize, bottom/right padding) and the
outputs are cropped and resized back; the reference pads differently in training and test, and so
does this. Otherwise (``crop``, MA-SAM) training patches are converted exactly like the windows of
inference: a 2D window of ``patch`` pixels is resized to the SAM input size, and whole cases are
predicted window by window (MONAI's sliding window, Gaussian-weighted), so the scale seen in
training and test is the same whatever the image size. MA-SAM additionally slides through z in
blocks with a halo. Models trained with the reference loss output sigmoid activations, which are
blended and arg-maxed as they are; the others output logits (softmax before blending).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medpipe.models.ma_sam import blockwise_predict
from medpipe.models.swin_unetr import sliding_window_logits
from medpipe.models.transforms import PixelStats
from medpipe.semantic.preprocess import (
    channels_first,
    labels_to_sam,
    restore_logits,
    to_sam_batch,
    whole_images_to_sam,
    whole_labels_to_sam,
)


@dataclass
class TorchMethod:
    """A model plus the rules that turn patches into its input and whole cases into label maps."""

    name: str
    model: torch.nn.Module
    ndim: int
    patch: tuple[int, ...]
    input_size: int | None = None  # SAM input side; None for Swin UNETR
    halo: int = 0
    overlap: float = 0.25
    device: str = "cpu"
    image_prep: str = "crop"  # resize: whole 2D images (SAM-UNETR); crop: patches and sliding windows
    activation: str | None = None  # the model's output activation (sigmoid for the reference loss)
    pixels: PixelStats | None = None  # the SAM backbone's input normalisation (None for Swin UNETR)

    @property
    def whole_images(self) -> bool:
        return self.image_prep == "resize"

    def _probs(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs if self.activation == "sigmoid" else outputs.softmax(1)

    def to_batch(self, images: list[np.ndarray], labels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches or whole images (0-255, colour last) and labels -> (x, y) with y of shape (B, 1, ...)."""
        if self.whole_images:
            return (whole_images_to_sam([channels_first(i, 2) for i in images], self.input_size, self.pixels),
                    whole_labels_to_sam(labels, self.input_size))
        x = torch.from_numpy(np.stack([channels_first(i, self.ndim) for i in images]).astype(np.float32))
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        if self.name == "swin_unetr":
            return x / 255.0, y[:, None]
        if self.ndim == 2:
            return to_sam_batch(x, self.input_size, self.pixels), labels_to_sam(y, self.input_size)[:, None]
        b, c, d, h, w = x.shape  # MA-SAM: every slice through SAM's geometry
        xs = to_sam_batch(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w), self.input_size, self.pixels)
        xs = xs.view(b, d, 3, self.input_size, self.input_size).permute(0, 2, 1, 3, 4)
        ys = labels_to_sam(y.reshape(b * d, h, w), self.input_size).view(b, 1, d, self.input_size, self.input_size)
        return xs, ys

    def _sam_window_2d(self, window: torch.Tensor) -> torch.Tensor:
        """(N, C, ph, pw) 0-255 windows -> (N, K, ph, pw) probabilities (SAM-UNETR)."""
        outputs = self.model(to_sam_batch(window, self.input_size, self.pixels).to(self.device))
        return self._probs(restore_logits(outputs, tuple(window.shape[-2:]), self.input_size)).cpu()

    def _sam_window_3d(self, window: torch.Tensor) -> torch.Tensor:
        """(N, C, d, ph, pw) 0-255 windows -> (N, K, d, ph, pw) probabilities (MA-SAM)."""
        n, c, d, h, w = window.shape
        x = to_sam_batch(window.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w), self.input_size, self.pixels)
        x = x.view(n, d, 3, self.input_size, self.input_size).permute(0, 2, 1, 3, 4)
        logits = self.model(x.to(self.device))  # (N, K, d, S, S)
        k = logits.shape[1]
        flat = logits.permute(0, 2, 1, 3, 4).reshape(n * d, k, self.input_size, self.input_size)
        flat = restore_logits(flat, (h, w), self.input_size)
        return self._probs(flat.view(n, d, k, h, w).permute(0, 2, 1, 3, 4)).cpu()

    @torch.no_grad()
    def predict(self, image_0_255: np.ndarray) -> np.ndarray:
        """A whole case (0-255, colour last) -> its label map (spatial shape of the case)."""
        self.model.eval()
        x = torch.from_numpy(channels_first(image_0_255, self.ndim).astype(np.float32))[None]
        if self.name == "swin_unetr":
            probs = sliding_window_logits(self.model, (x / 255.0).to(self.device), self.patch, overlap=self.overlap)
        elif self.whole_images:  # the whole case at once: SAM's transform, outputs back to the case's size
            probs = self._sam_window_2d(x)
        elif self.ndim == 2:
            probs = sliding_window_inference(x, self.patch, 1, self._sam_window_2d, overlap=self.overlap,
                                             mode="gaussian")
        else:
            depth = self.patch[0]

            def predict_block(block):  # (1, C, depth, Y, X): slide in-plane, z fits the window
                return sliding_window_inference(block, self.patch, 1, self._sam_window_3d, overlap=self.overlap,
                                                mode="gaussian")

            probs = blockwise_predict(predict_block, x[0], depth, self.halo)[None]
        return probs[0].argmax(0).cpu().numpy().astype(np.uint16)
