"""Export stage: training checkpoint -> ``segment_anything``-loadable model, and the compatibility table.

``checkpoint`` writes the export, ``compat`` checks it in the SAM tools, ``command`` holds the
``medpipe export`` / ``check-compat`` / ``compat-table`` command lines.
"""

from medpipe.export.checkpoint import SAM_PREFIXES, ExportError, export, split_training_state
from medpipe.export.compat import check_compat

__all__ = ["SAM_PREFIXES", "ExportError", "check_compat", "export", "split_training_state"]
