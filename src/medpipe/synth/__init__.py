"""Demo raw datasets in real file formats (``medpipe synth``).

The demo study and the tests need data that looks like the real thing to every later stage (file
formats, dtypes, spacing, patients, several instances and classes, tiny objects) without any
download. One module per modality kind draws images; ``generate`` writes them reproducibly.
"""

from __future__ import annotations

from .generate import KINDS, SynthError, generate_dataset

__all__ = ["KINDS", "SynthError", "generate_dataset"]
