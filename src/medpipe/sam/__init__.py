"""SAM models of the study: building, strict loading and input preprocessing."""

from medpipe.sam.models import (
    MODEL_TYPES,
    RANDOM_INIT,
    SAM_TYPES,
    CheckpointError,
    build_sam,
    build_tiny_sam,
    checkpoint_label,
    load_strict,
    read_state_dict,
)
from medpipe.sam.preprocess import percentile_normalize, sam_input, to_sam_uint8, to_three_channels

__all__ = [
    "MODEL_TYPES",
    "RANDOM_INIT",
    "SAM_TYPES",
    "CheckpointError",
    "build_sam",
    "build_tiny_sam",
    "checkpoint_label",
    "load_strict",
    "read_state_dict",
    "percentile_normalize",
    "sam_input",
    "to_sam_uint8",
    "to_three_channels",
]
