"""Read access to a medpipe dataset store (zarr v3), the interface between ingest and every later stage.

The layout is documented in ``docs/data-format.md``. Later stages import only this module to read
data, so the on-disk layout can evolve in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

FORMAT_VERSION = 1
COMPLETE_FLAG = "complete"


class StoreError(RuntimeError):
    """A store is missing, incomplete or has an unexpected layout."""


@dataclass(frozen=True)
class CaseInfo:
    """Per-case metadata as stored in the case group's attributes."""

    case_id: str
    patient_id: str
    modality: str
    spacing: tuple[float, ...]
    attrs: dict


class DatasetStore:
    """A read-only view on one ingested dataset.

    Images are (Y, X), (Y, X, C) for RGB, or (Z, Y, X) for volumes; labels share the spatial
    shape and hold semantic class ids (0 = background). Opening refuses stores whose ingest did
    not finish, so a killed ingest can never be mistaken for a complete dataset.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: dataset store does not exist")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several types for a broken store
            raise StoreError(f"{self.path}: not a readable zarr group ({exc})") from exc
        meta = self._root.attrs.get("medpipe", {})
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path}: unknown medpipe format version {meta.get('format_version')!r}")
        if not meta.get(COMPLETE_FLAG, False):
            raise StoreError(f"{self.path}: ingest did not complete (store is not marked complete)")
        self._attrs = dict(self._root.attrs)

    @property
    def name(self) -> str:
        return self._attrs["dataset"]["name"]

    @property
    def modality(self) -> str:
        return self._attrs["dataset"]["modality"]

    @property
    def ndim(self) -> int:
        return int(self._attrs["dataset"]["ndim"])

    @property
    def classes(self) -> dict[int, str]:
        return {int(k): v for k, v in self._attrs["dataset"]["classes"].items()}

    @property
    def case_ids(self) -> list[str]:
        return list(self._attrs["case_ids"])

    def _case(self, case_id: str) -> zarr.Group:
        try:
            return self._root["cases"][case_id]
        except KeyError as exc:
            raise StoreError(f"{self.path}: no case {case_id!r}") from exc

    def image_array(self, case_id: str) -> zarr.Array:
        """The lazily readable image array (slice it to read a part of a volume)."""
        return self._case(case_id)["image"]

    def label_array(self, case_id: str) -> zarr.Array:
        return self._case(case_id)["label"]

    def image(self, case_id: str) -> np.ndarray:
        return self.image_array(case_id)[...]

    def label(self, case_id: str) -> np.ndarray:
        return self.label_array(case_id)[...]

    def info(self, case_id: str) -> CaseInfo:
        attrs = dict(self._case(case_id).attrs)
        return CaseInfo(
            case_id=case_id,
            patient_id=attrs["patient_id"],
            modality=attrs["modality"],
            spacing=tuple(attrs["spacing"]),
            attrs=attrs,
        )
