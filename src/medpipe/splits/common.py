"""What every part of the split code shares: split names, table columns, block sizes, errors, and
the keyed hash and byte-string helpers."""

from __future__ import annotations

import hashlib

import numpy as np

from medpipe.errors import MedpipeError

SPLITS = ("train", "val", "test")
COLUMNS = ["dataset", "case_id", "patient_id", "modality", "split"]
BLOCK_ROWS = 200_000  # patient groups per block when hashing or assigning
WRITE_ROWS = 50_000  # rows per block when writing a table (pandas makes Python strings of a block)
READ_ROWS = 50_000  # rows per block when reading a table or ledger (the same reason)
SEP = b"\x1f"


class SplitError(MedpipeError, ValueError):
    """Inconsistent split input (e.g. a patient split across two earlier splits)."""


class MissingCasesError(SplitError):
    """More of a dataset's recorded cases are absent than ``splits.max_missing`` allows."""


def _rank_key(seed: int, *parts: str) -> str:
    """A stable pseudo-random order key: sha256 of the seed and the group identity."""
    return hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()


def _validate_fractions(fractions: dict) -> dict[str, float]:
    values = {name: float(fractions.get(name, 0.0)) for name in SPLITS}
    if any(v < 0 for v in values.values()) or abs(sum(values.values()) - 1.0) > 1e-6:
        raise SplitError(f"split fractions must be >= 0 and sum to 1, got {values}")
    return values


def _encode(values) -> np.ndarray:
    """Text values -> a UTF-8 byte-string array (at least ``S1``)."""
    array = np.asarray(values)
    if array.dtype.kind == "S":
        return array
    if array.size == 0:
        return np.zeros(0, dtype="S1")
    return np.char.encode(array.astype(str), "utf-8")


def _decode(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.size else np.zeros(0, dtype=str)


def _split_codes(split, source: str) -> np.ndarray:
    """Split names (text or bytes) -> codes 0 train, 1 val, 2 test; an unknown name is an error."""
    split = _encode(split)
    codes = np.full(len(split), -1, dtype=np.int8)
    for i, name in enumerate(SPLITS):
        codes[split == name.encode()] = i
    if (codes < 0).any():
        bad = sorted({s.decode() for s in split[codes < 0][:10].tolist()})
        raise SplitError(f"{source}: unknown split values {bad} (expected {list(SPLITS)})")
    return codes


def _sorted(values: np.ndarray) -> np.ndarray:
    """``values`` sorted (no copy when they already are, as a store's case index is)."""
    return values if len(values) < 2 or bool((values[1:] >= values[:-1]).all()) else np.sort(values)


# ------------------------------------------------------------------------------- case tables
