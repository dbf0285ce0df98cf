"""Model-type names and checkpoint labels, free of torch so workflow files can import them fast."""

#: label written into every output that comes from a model without pretrained weights
RANDOM_INIT = "random-init"
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
MODEL_TYPES = SAM_TYPES + ("tiny",)


def checkpoint_label(checkpoint) -> str:
    """How a base checkpoint is named in outputs: its path, or ``random-init`` for none."""
    return RANDOM_INIT if checkpoint in (None, "", RANDOM_INIT) else str(checkpoint)
