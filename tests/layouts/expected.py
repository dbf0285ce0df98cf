"""What a correct ingest must make of a miniature: the record every generator returns.

The generators know exactly what they wrote, so they state the outcome (case and patient ids, the
stored label after every label rule, shapes, spacing, which files must be quarantined and why, which
are dropped silently) instead of the ingest tests re-deriving it from the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Problem kinds; the ingest tests map each to a regex over their quarantine messages.
PROBLEM_KINDS = (
    "unpaired_image",   # image without label
    "unpaired_label",   # label without image
    "missing_file",     # a file an index or partner rule requires is absent (JSON-listed mask, 2nd lung)
    "shape_mismatch",   # label (or one label file / slice) shape differs from the image's
    "empty_label",      # label without foreground
    "constant_image",   # image with a single value
    "unknown_value",    # label value outside the classes / value maps
    "unreadable",       # truncated or corrupt file
    "missing_slice",    # image and label slice sets of a 2D stack differ
    "bad_channels",     # channel layout that is neither grey nor colour
)


@dataclass
class Case:
    """One case as the store must hold it (arrays in store axis order)."""

    case_id: str
    patient_id: str
    label: np.ndarray
    image_shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    split: str | None = None
    image: np.ndarray | None = None
    files: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)

    @property
    def values(self) -> list[int]:
        """Nonzero label values present (classes, or instance ids for instance labels)."""
        return [int(v) for v in np.unique(self.label) if v != 0]

    @property
    def n_objects(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Problem:
    """A case (or file) a correct ingest quarantines; ``path`` (relative to the root) is what the
    reason must name."""

    case_id: str
    kind: str
    path: str

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}")


@dataclass
class Entry:
    """The expected outcome for one study.yaml dataset entry."""

    name: str
    ndim: int
    classes: dict[int, str]
    cases: list[Case] = field(default_factory=list)
    quarantined: list[Problem] = field(default_factory=list)
    label_kind: str = "classes"
    axes: str = "zyx"
    notes: str = ""

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(f"{self.name}: no expected case {case_id!r}")

    @property
    def case_ids(self) -> list[str]:
        return [case.case_id for case in self.cases]

    def quarantine(self, case_id: str, kind: str, path: str) -> None:
        """Move ``case_id`` (if expected as a good case) to the quarantined list."""
        self.cases = [case for case in self.cases if case.case_id != case_id]
        self.quarantined.append(Problem(case_id, kind, path))

    def finish(self) -> None:
        self.cases.sort(key=lambda case: case.case_id)
        self.quarantined.sort(key=lambda p: (p.case_id, p.path))


@dataclass
class Expected:
    """Everything a generator wrote under ``root`` and what ingest must make of it."""

    name: str
    folder: str
    root: Path
    entries: dict[str, Entry]
    defects: tuple[str, ...] = ()
    files: list[str] = field(default_factory=list)

    def entry(self, name: str | None = None) -> Entry:
        if name is None:
            if len(self.entries) != 1:
                raise ValueError(f"{self.name} has entries {sorted(self.entries)}; name one")
            return next(iter(self.entries.values()))
        return self.entries[name]
