"""SAM models of the study: building, strict loading and input preprocessing.

The names below are imported on first use (PEP 562), so importing ``medpipe.sam`` for a model-type
name or a checkpoint label does not load torch; workflow files parse fast.
"""

import importlib

from medpipe.sam.names import MODEL_TYPES, RANDOM_INIT, SAM_TYPES, checkpoint_label

_LAZY = {
    "CheckpointError": "medpipe.sam.models",
    "build_sam": "medpipe.sam.models",
    "build_tiny_sam": "medpipe.sam.models",
    "load_strict": "medpipe.sam.models",
    "read_state_dict": "medpipe.sam.models",
    "percentile_normalize": "medpipe.sam.preprocess",
    "sam_input": "medpipe.sam.preprocess",
    "to_sam_uint8": "medpipe.sam.preprocess",
    "to_three_channels": "medpipe.sam.preprocess",
}

__all__ = ["MODEL_TYPES", "RANDOM_INIT", "SAM_TYPES", "checkpoint_label", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medpipe.sam' has no attribute {name!r}")
