"""Leakage-free, stable train/val/test splits.

Rules (docs/fidelity.md, "Splits"):
- grouped: all cases of a patient land in one split (the group key is dataset + patient id);
- stratified: modalities are visited one after the other (sorted by name) and each patient group
  goes to the split furthest below its target over all cases assigned so far, so the whole table
  is within one patient group of its fractions and each modality within two (a dataset, one
  modality, within one); many small modalities together still fill a small split;
- seeded and deterministic: patients are visited in the order of a keyed hash of (seed, group),
  which does not depend on Python's hash seed, file order or the other cases present;
- stable: assignments read from an earlier table are kept, so adding cases never moves old ones.
  The split rules keep a *ledger* of every assignment ever made (under the current seed and
  fractions): it only grows, so a case that is absent for a run (a file moved, a share not
  mounted) gets its old split back when it returns. A dataset that lost more than
  ``splits.max_missing`` of its ledger's cases is an error, not a smaller split
  (docs/reliability.md).

The finetuning corpus is the union of every dataset with role ``finetune``. A case that is in the
test split of its own dataset is held out of the corpus (split ``test``), so finetuning never sees
an evaluation test image; the corpus fractions apply to the other, *free* cases. Paper variants
(full = 90/10, p60 = 50 % train + 10 % val) are nested subsets of the corpus train/val parts,
recorded as ``in_<variant>`` columns.

Scale: the corpus has millions of images (SA-Med2D-20M). Cases are therefore held as numpy
arrays (:class:`CaseTable`: byte strings and integer codes, no Python object per case), read from
the stores' case index, grouped and assigned with numpy (Python loops run over patient groups,
not cases), and tables and ledgers are read and written in blocks. The pandas functions
(:func:`assign_splits`, :func:`select_variant`) are thin wrappers for small tables and tests; both
paths give the same assignment.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medpipe import files
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ["dataset", "case_id", "patient_id", "modality", "split"]
BLOCK_ROWS = 200_000  # patient groups per block when hashing or assigning
WRITE_ROWS = 50_000  # rows per block when writing a table (pandas makes Python strings of a block)
READ_ROWS = 50_000  # rows per block when reading a table or ledger (the same reason)
SEP = b"\x1f"


class SplitError(ValueError):
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


@dataclass
class CaseTable:
    """One row per case as numpy arrays: dataset and modality as codes into sorted name lists,
    case and patient ids as UTF-8 byte strings."""

    datasets: list[str]
    modalities: list[str]
    dataset: np.ndarray
    modality: np.ndarray
    case_id: np.ndarray
    patient_id: np.ndarray

    def __len__(self) -> int:
        return len(self.case_id)

    @classmethod
    def build(cls, dataset, modality, case_id, patient_id) -> CaseTable:
        """From per-case text columns (any array-likes of str or bytes)."""
        dataset, modality = _encode(dataset), _encode(modality)
        dataset_names, dataset_codes = np.unique(dataset, return_inverse=True)
        modality_names, modality_codes = np.unique(modality, return_inverse=True)
        return cls([d.decode() for d in dataset_names.tolist()], [m.decode() for m in modality_names.tolist()],
                   dataset_codes.astype(np.int32), modality_codes.astype(np.int32),
                   _encode(case_id), _encode(patient_id))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CaseTable:
        return cls.build(frame["dataset"].to_numpy(), frame["modality"].to_numpy(), frame["case_id"].to_numpy(),
                         frame["patient_id"].to_numpy())

    @classmethod
    def from_stores(cls, paths) -> CaseTable:
        """The cases of dataset stores, read from their case index (no per-case metadata reads)."""
        stores = [DatasetStore(path) for path in paths]
        datasets = sorted({store.name for store in stores})
        modalities = sorted({store.modality for store in stores})
        parts = []
        for store in stores:
            cases, patients = store.case_index()
            parts.append((np.full(len(cases), datasets.index(store.name), dtype=np.int32),
                          np.full(len(cases), modalities.index(store.modality), dtype=np.int32), cases, patients))
        if not parts:
            return cls.build([], [], [], [])
        if len(parts) == 1:  # one store: no copy of its (possibly millions of) ids
            return cls(datasets, modalities, *parts[0])
        return cls(datasets, modalities, *(np.concatenate([p[i] for p in parts]) for i in range(4)))

    @classmethod
    def read_blocks(cls, path):
        """A split table or ledger file as ``(cases, split codes)`` blocks of ``READ_ROWS`` rows."""
        for block in _csv_blocks(path, COLUMNS):
            if block.empty:
                continue
            names = {}
            for column in ("dataset", "modality", "split"):  # few distinct names: encode those, not every row
                codes, unique = pd.factorize(block[column], sort=True)
                names[column] = (unique.tolist(), codes.astype(np.int32))
            split = _split_codes(np.array(names["split"][0]), str(path))[names["split"][1]]
            yield cls(names["dataset"][0], names["modality"][0], names["dataset"][1], names["modality"][1],
                      _encode(block["case_id"].to_numpy()), _encode(block["patient_id"].to_numpy())), split

    def take(self, rows: np.ndarray) -> CaseTable:
        """The cases ``rows`` (indices or a mask), with the same name lists."""
        return CaseTable(self.datasets, self.modalities, self.dataset[rows], self.modality[rows], self.case_id[rows],
                         self.patient_id[rows])

    @classmethod
    def concat(cls, tables: list[CaseTable]) -> CaseTable:
        """The cases of several tables (their name lists merged)."""
        datasets = sorted({name for table in tables for name in table.datasets})
        modalities = sorted({name for table in tables for name in table.modalities})

        def recode(codes: np.ndarray, names: list[str], merged: list[str]) -> np.ndarray:
            return np.array([merged.index(name) for name in names] or [0], dtype=np.int32)[codes]

        return cls(datasets, modalities,
                   np.concatenate([recode(t.dataset, t.datasets, datasets) for t in tables]),
                   np.concatenate([recode(t.modality, t.modalities, modalities) for t in tables]),
                   np.concatenate([t.case_id for t in tables]), np.concatenate([t.patient_id for t in tables]))

    def ids_by_dataset(self) -> dict[str, np.ndarray]:
        """The sorted case ids of each dataset (views, no copy, where a dataset's rows are one
        sorted run, as those of a store are in :meth:`from_stores`)."""
        out = {}
        for code, name in enumerate(self.datasets):
            rows = np.flatnonzero(self.dataset == code)
            if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
                out[name] = _sorted(self.case_id[rows[0]:rows[-1] + 1])
            else:
                out[name] = np.sort(self.case_id[rows])
        return out

    def found_in(self, ids_by_dataset: dict[str, np.ndarray]) -> np.ndarray:
        """Whether each case (dataset and case id) is among ``ids_by_dataset`` (see :meth:`ids_by_dataset`)."""
        out = np.zeros(len(self), dtype=bool)
        for code, name in enumerate(self.datasets):
            here = ids_by_dataset.get(name)
            rows = np.flatnonzero(self.dataset == code)
            if here is None or not len(here) or not len(rows):
                continue
            ids = self.case_id[rows]
            where = np.clip(np.searchsorted(here, ids), 0, len(here) - 1)
            out[rows] = here[where] == ids
        return out

    def sort_order(self) -> np.ndarray:
        """Row order by (dataset, case id): the order of every written table."""
        return np.lexsort((self.case_id, self.dataset))

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "dataset": np.array(self.datasets or [""], dtype=object)[self.dataset[rows]],
            "case_id": _decode(self.case_id[rows]),
            "patient_id": _decode(self.patient_id[rows]),
            "modality": np.array(self.modalities or [""], dtype=object)[self.modality[rows]],
        }

    def frame(self, split: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """A (small) table as a pandas frame, sorted like :meth:`write`."""
        order = self.sort_order()
        data = self.columns(order)
        data["split"] = np.array(SPLITS, dtype=object)[split[order]]
        for name, values in (extra or {}).items():
            data[name] = values[order]
        return pd.DataFrame(data).reset_index(drop=True)

    def write(self, path, split: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> Path:
        """Write the split table (atomically), block by block in (dataset, case id) order."""
        order = self.sort_order()
        header = True
        with files.atomic_path(path) as tmp:
            for lo in range(0, max(len(order), 1), WRITE_ROWS):
                rows = order[lo:lo + WRITE_ROWS]
                data = self.columns(rows)
                data["split"] = np.array(SPLITS, dtype=object)[split[rows]]
                for name, values in (extra or {}).items():
                    data[name] = values[rows]
                pd.DataFrame(data, columns=list(data)).to_csv(tmp, sep="\t", index=False, header=header,
                                                              mode="w" if header else "a")
                header = False
        return Path(path)


# -------------------------------------------------------------------------- fixed assignments


@dataclass
class Fixed:
    """Patient-level assignments to keep: sorted unique group keys and their split codes."""

    keys: np.ndarray
    codes: np.ndarray

    @classmethod
    def empty(cls) -> Fixed:
        return cls(np.zeros(0, dtype="S1"), np.zeros(0, dtype=np.int8))

    @classmethod
    def from_columns(cls, dataset, patient, split, source: str = "split table") -> Fixed:
        """From per-case columns; a patient found in two splits is an error."""
        codes = _split_codes(split, source)
        return cls.from_keys(np.char.add(np.char.add(_encode(dataset), SEP), _encode(patient)), codes, source)

    @classmethod
    def from_keys(cls, keys: np.ndarray, codes: np.ndarray, source: str = "split table") -> Fixed:
        """From group keys (``dataset \x1f patient``) and split codes, one pair per case (or per
        group of a part); a key with two codes is an error."""
        order = np.lexsort((codes, keys))
        keys, codes = keys[order], codes[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        starts = np.flatnonzero(first)
        lowest = codes[starts]
        highest = np.maximum.reduceat(codes, starts) if len(starts) else codes[:0]
        if (lowest != highest).any():
            where = int(np.flatnonzero(lowest != highest)[0])
            end = starts[where + 1] if where + 1 < len(starts) else len(codes)
            raise _several_splits(source, keys[starts[where]], codes[starts[where]:end])
        return cls(keys[starts], lowest)

    @classmethod
    def from_cases(cls, table: CaseTable, split: np.ndarray, source: str) -> Fixed:
        """From the cases of a table and their split codes (grouped on integer codes, as in
        :func:`assign_codes`); a patient found in two splits is an error."""
        group_of_case, keys, _, _ = _groups(table)
        lowest = np.full(len(keys), len(SPLITS), dtype=np.int8)
        highest = np.full(len(keys), -1, dtype=np.int8)
        np.minimum.at(lowest, group_of_case, split)
        np.maximum.at(highest, group_of_case, split)
        if (lowest != highest).any():
            where = int(np.flatnonzero(lowest != highest)[0])
            raise _several_splits(source, keys[where], split[group_of_case == where])
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], lowest[order])

    @classmethod
    def from_table(cls, path, only: str | None = None) -> Fixed:
        """From a split table file (streamed in blocks), or empty when there is none; ``only``: the
        rows of that split only."""
        if path is None or not Path(path).exists():
            return cls.empty()
        parts = []
        for block in _csv_blocks(path, ("dataset", "patient_id", "split")):
            if only is not None:
                block = block[block["split"] == only]
            if len(block):
                parts.append(cls.from_columns(block["dataset"].to_numpy(), block["patient_id"].to_numpy(),
                                              block["split"].to_numpy(), str(path)))
        return cls.merge(parts, str(path))

    @classmethod
    def merge(cls, parts: list[Fixed], source: str) -> Fixed:
        """The assignments of several parts of one table (a patient in two splits is an error)."""
        if not parts:
            return cls.empty()
        return cls.from_keys(np.concatenate([p.keys for p in parts]), np.concatenate([p.codes for p in parts]), source)

    def override(self, other: Fixed) -> Fixed:
        """``self`` updated by ``other`` (``other`` wins where both have a patient)."""
        keys = np.concatenate([self.keys, other.keys])
        codes = np.concatenate([self.codes, other.codes])
        order = np.argsort(keys, kind="stable")
        keys, codes = keys[order], codes[order]
        last = np.ones(len(keys), dtype=bool)
        last[:-1] = keys[:-1] != keys[1:]
        return Fixed(keys[last], codes[last])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The fixed split code of each key, -1 where none."""
        out = np.full(len(keys), -1, dtype=np.int8)
        if len(self.keys) and len(keys):
            where = np.clip(np.searchsorted(self.keys, keys), 0, len(self.keys) - 1)
            hit = self.keys[where] == keys
            out[hit] = self.codes[where[hit]]
        return out


def _several_splits(source: str, key: bytes, codes: np.ndarray) -> SplitError:
    dataset, patient = key.split(SEP, 1)
    splits = sorted({SPLITS[c] for c in codes.tolist()})
    return SplitError(f"{source}: patient {patient.decode()!r} of {dataset.decode()!r} is in several splits: {splits}")


def _csv_blocks(path, columns):
    """Blocks (frames of ``READ_ROWS`` rows) of columns of a TSV table, every value as text (ids
    stay text: ``NA`` is ``NA``); errors name the file."""
    try:
        yield from pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, usecols=list(columns),
                               chunksize=READ_ROWS)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SplitError(f"{path}: cannot read the split table ({exc})") from exc
    except ValueError as exc:  # usecols names a missing column
        raise SplitError(f"{path}: split table lacks columns ({exc})") from exc


# ------------------------------------------------------------------------------ assignment


def _groups(table: CaseTable):
    """Patient groups: ``(group of each case, key, modality code, size)`` per group (key =
    ``dataset \x1f patient``). A group's modality is the first (in name order) of its cases'
    modalities. Grouping runs on integer codes; byte-string keys are built per group only."""
    patients, patient_code = np.unique(table.patient_id, return_inverse=True)
    combined = table.dataset.astype(np.int64) * max(len(patients), 1) + patient_code
    unique, group_of_case, sizes = np.unique(combined, return_inverse=True, return_counts=True)
    names = np.array([d.encode() for d in table.datasets] or [b""])
    keys = np.char.add(np.char.add(names[unique // max(len(patients), 1)], SEP),
                       patients[unique % max(len(patients), 1)] if len(patients) else np.zeros(0, "S1"))
    modality = np.full(len(unique), np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(modality, group_of_case, table.modality)
    return group_of_case, keys, modality, sizes


def _group_hashes(seed: int, prefix: tuple[str, ...], modality: str, keys: np.ndarray) -> np.ndarray:
    """``_rank_key(seed, *prefix, modality, dataset, patient)`` of each group key, as ``S64``."""
    head = SEP.join([str(seed).encode(), *(p.encode() for p in prefix), modality.encode()]) + SEP
    out = np.empty(len(keys), dtype="S64")
    for lo in range(0, len(keys), BLOCK_ROWS):
        for i, key in enumerate(keys[lo:lo + BLOCK_ROWS].tolist(), start=lo):
            out[i] = hashlib.sha256(head + key).hexdigest().encode()
    return out


def assign_codes(table: CaseTable, fractions: dict, seed: int, fixed: Fixed | None = None,
                 held_out: Fixed | None = None) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) of each case of ``table`` (rules in the module docstring).

    Patient groups in ``held_out`` are ``test`` and outside the fractions; groups in ``fixed``
    keep their split and count. Modalities are visited in sorted order, the free groups of each in
    hash order; each goes to the split whose case count, over everything assigned so far, is
    furthest below its target. So every split of the table ends within one patient group of
    ``fraction * n_cases`` (``n_cases`` without the held-out ones), and of each modality within
    two: a modality too small to reach a small split alone (three patients, 10 % val) still
    contributes to it together with the others. With one modality this is the per-modality rule.
    """
    weights = _validate_fractions(fractions)
    order = np.lexsort((table.case_id, table.dataset))
    cases, datasets = table.case_id[order], table.dataset[order]
    same = (datasets[1:] == datasets[:-1]) & (cases[1:] == cases[:-1])
    if same.any():
        duplicated = sorted({v.decode() for v in cases[1:][same][:10].tolist()})
        raise SplitError(f"duplicate case ids: {duplicated}")
    del order, cases, datasets, same
    group_of_case, keys, modality, sizes = _groups(table)
    group_split = (fixed or Fixed.empty()).lookup(keys)
    held = (held_out or Fixed.empty()).lookup(keys) >= 0
    group_split[held] = SPLITS.index("test")
    targets = [weights[name] for name in SPLITS]
    counts = [0] * len(SPLITS)  # over every modality visited so far
    for code, name in enumerate(table.modalities):
        in_stratum = (modality == code) & ~held
        for s in range(len(SPLITS)):
            counts[s] += int(sizes[in_stratum & (group_split == s)].sum())
        free = np.flatnonzero(in_stratum & (group_split < 0))
        if not len(free):
            continue
        order = free[np.argsort(_group_hashes(seed, (), name, keys[free]), kind="stable")]
        total = sum(counts)
        for lo in range(0, len(order), BLOCK_ROWS):
            block = order[lo:lo + BLOCK_ROWS]
            choices = np.empty(len(block), dtype=np.int8)
            for i, size in enumerate(sizes[block].tolist()):
                total += size
                deficits = [targets[s] * total - counts[s] for s in range(3)]
                choice = max(range(3), key=lambda s: (deficits[s], -s))
                counts[choice] += size
                choices[i] = choice
            group_split[block] = choices
    return group_split[group_of_case]


def variant_mask(table: CaseTable, split: np.ndarray, variant: dict, seed: int, fractions: dict) -> np.ndarray:
    """Cases of a nested corpus subset: the share ``variant[part] / fractions[part]`` of each
    modality's ``part`` cases (part = train, val).

    ``fractions`` are the corpus fractions the table was split with, so a variant equal to them is
    the whole train/val corpus (the held-out test cases are never in a variant) and p60 (0.5 of
    0.9) is 5/9 of every modality's train cases. Patients are taken in hash order within each
    modality and split, so a smaller variant is always a subset of a larger one and the choice is
    stable.
    """
    weights = _validate_fractions(fractions)
    group_of_case, keys, modality, sizes = _groups(table)
    group_split = np.zeros(len(keys), dtype=np.int8)
    group_split[group_of_case] = split
    chosen_group = np.zeros(len(keys), dtype=bool)
    for part in ("train", "val"):
        code = SPLITS.index(part)
        share = float(variant[part]) / weights[part] if weights[part] > 0 else 1.0
        for m, name in enumerate(table.modalities):
            members = np.flatnonzero((modality == m) & (group_split == code))
            if not len(members):
                continue
            target = share * int(sizes[members].sum())
            ranked = members[np.argsort(_group_hashes(seed, ("variant",), name, keys[members]), kind="stable")]
            before = np.cumsum(sizes[ranked]) - sizes[ranked]
            chosen_group[ranked[before < target - 1e-9]] = True
    return chosen_group[group_of_case]


# ------------------------------------------------------------------- pandas API (small tables)


def assign_splits(
    cases: pd.DataFrame,
    fractions: dict,
    seed: int,
    fixed: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Assign each case a split; returns ``cases`` with a ``split`` column, sorted by dataset and
    case id. ``cases`` has columns dataset, case_id, patient_id, modality; ``fixed`` maps
    (dataset, patient_id) to a split that must be kept (earlier assignments)."""
    table = CaseTable.from_frame(cases)
    fixed_arrays = Fixed.empty()
    if fixed:
        items = list(fixed.items())
        fixed_arrays = Fixed.from_columns([d for (d, _), _ in items], [p for (_, p), _ in items],
                                          [s for _, s in items])
    return table.frame(assign_codes(table, fractions, seed, fixed_arrays))


def fixed_from_table(table: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """Patient-level assignments from an earlier split table (refusing patients split in two)."""
    if table is None or table.empty:
        return {}
    fixed = Fixed.from_columns(table["dataset"].to_numpy(), table["patient_id"].to_numpy(), table["split"].to_numpy())
    out = {}
    for key, code in zip(fixed.keys.tolist(), fixed.codes.tolist()):
        dataset, patient = key.split(SEP, 1)
        out[(dataset.decode(), patient.decode())] = SPLITS[code]
    return out


def select_variant(table: pd.DataFrame, variant: dict, seed: int, fractions: dict) -> pd.Series:
    """Boolean mask of a nested corpus subset of a split table (see :func:`variant_mask`)."""
    cases = CaseTable.from_frame(table)
    split = _split_codes(table["split"].to_numpy(), "split table")
    return pd.Series(variant_mask(cases, split, variant, seed, fractions), index=table.index)


def cases_of_store(store_path: str | os.PathLike) -> pd.DataFrame:
    """The cases of one store as a frame (small datasets; the split stage uses :class:`CaseTable`)."""
    table = CaseTable.from_stores([store_path])
    return pd.DataFrame(table.columns(table.sort_order()), columns=COLUMNS[:4])


# ------------------------------------------------------------------------------ table files


def read_split_table(path: str | os.PathLike, required=("dataset", "case_id", "split")) -> pd.DataFrame:
    """A split table (or the corpus table) with every value as text; errors name the file.

    Every reader of split tables goes through here, so ids stay strings: a case named ``NA`` or
    ``null`` is that case, not a missing value.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"{path}: split table does not exist")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SplitError(f"{path}: cannot read the split table ({exc})") from exc
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise SplitError(f"{path}: split table lacks columns {missing}")
    return table


def split_case_ids(path: str | os.PathLike, dataset: str, split: str) -> list[str]:
    """Sorted case ids of ``dataset`` in ``split`` of the split table at ``path``."""
    table = read_split_table(path)
    return sorted(table.loc[(table["dataset"] == dataset) & (table["split"] == split), "case_id"])


def read_table(path: str | os.PathLike | None) -> pd.DataFrame | None:
    """An earlier split table or ledger if it exists, else ``None``."""
    if path is None or not Path(path).exists():
        return None
    return read_split_table(path, required=())


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    files.write_tsv(table, path)


def _meta(seed: int, fractions: dict) -> dict[str, str]:
    return {"seed": str(seed), **{k: str(float(v)) for k, v in _validate_fractions(fractions).items()}}


def _ledger_valid(path: Path, seed: int, fractions: dict) -> bool:
    """Whether the ledger was recorded under this seed and fractions (else its assignments are not kept)."""
    meta = read_table(path.with_suffix(".meta.tsv"))
    if meta is not None and dict(zip(meta["key"], meta["value"])) == _meta(seed, fractions):
        return True
    log.warning("%s: %s; earlier assignments are not kept", path,
                "seed or fractions changed" if meta is not None else "its .meta.tsv is missing")
    return False


def _read_ledger(ledger, present: CaseTable, seed: int, fractions: dict, max_missing: float,
                 datasets: list[str] | None = None) -> tuple[Fixed, CaseTable | None]:
    """Check the ledger against the cases ``present`` now; returns its assignments to keep and its
    entries absent now, which the new ledger carries over (none when the ledger is not valid).

    Refuses (:class:`MissingCasesError`) a dataset that lost more than ``max_missing`` of its
    entries. Every dataset of the ledger is checked, or those in ``datasets`` (the corpus passes
    the datasets it has stores of: one taken out of the config is a decision, one whose store is
    empty is not). The ledger is read in blocks and never held whole: per block, its patients'
    splits and its absent entries are kept.
    """
    if not ledger or not Path(ledger).exists():
        return Fixed.empty(), None
    path = Path(ledger)
    valid = _ledger_valid(path, seed, fractions)
    here = present.ids_by_dataset()
    known: dict[str, int] = {}
    groups: list[Fixed] = []
    absent: list[CaseTable] = []
    for block, split in CaseTable.read_blocks(path):
        for code, name in enumerate(block.datasets):
            known[name] = known.get(name, 0) + int((block.dataset == code).sum())
        absent.append(block.take(~block.found_in(here)))
        if valid:
            groups.append(Fixed.from_cases(block, split, str(path)))
    carried = CaseTable.concat(absent) if absent else CaseTable.build([], [], [], [])
    for code, name in enumerate(carried.datasets):
        if datasets is not None and name not in datasets:
            continue
        missing = carried.case_id[carried.dataset == code]
        share = len(missing) / known[name]
        if len(missing) and share > max_missing + 1e-12:
            examples = [v.decode() for v in np.sort(missing)[:5].tolist()]
            raise MissingCasesError(
                f"{path}: {len(missing)} of the {known[name]} cases of dataset {name!r} recorded there are absent "
                f"now ({share:.0%} > splits.max_missing {max_missing:.0%}), e.g. {examples}; are its files "
                "reachable (a share not mounted, a moved folder)? Nothing was written. If the cases were removed on "
                "purpose, raise splits.max_missing (1 allows any loss; the ledger keeps their splits either way)"
            )
    if not valid:
        return Fixed.empty(), None
    return Fixed.merge(groups, str(path)), carried


def _write_ledger(ledger, table: CaseTable, split: np.ndarray, carried: CaseTable | None, fixed: Fixed, seed: int,
                  fractions: dict) -> None:
    """Write the ledger: the cases assigned now plus the earlier entries absent now (it never
    shrinks). A carried entry takes its patient's split of this run (``fixed``: the ledger's
    assignments updated by a frozen table or a held-out test patient), so no patient is in two."""
    if carried is not None and len(carried):
        group_of_case, keys, _, _ = _groups(carried)
        kept = fixed.lookup(keys)[group_of_case]
        if (kept < 0).any():  # cannot happen: every carried entry's patient is in the ledger's assignments
            raise SplitError(f"{ledger}: carried entries without a split")
        table = CaseTable.concat([table, carried])
        split = np.concatenate([split, kept])
    table.write(ledger, split)
    meta = _meta(seed, fractions)
    write_table(pd.DataFrame({"key": list(meta), "value": list(meta.values())}), Path(ledger).with_suffix(".meta.tsv"))


def _held_out(dataset_splits) -> Fixed:
    """The patients of every test case of the given per-dataset split tables."""
    held_out = Fixed.empty()
    for path in dataset_splits:
        if not Path(path).is_file():
            raise SplitError(f"{path}: split table does not exist")
        held_out = held_out.override(Fixed.from_table(path, only="test"))
    return held_out


def _counts(split: np.ndarray) -> dict[str, int]:
    return {name: int(n) for name, n in zip(SPLITS, np.bincount(split, minlength=3)) if n}


def split_dataset(store, out, fractions: dict, seed: int, previous=None, ledger=None,
                  max_missing: float = 1.0) -> dict[str, int]:
    """Write the split table of one dataset store to ``out`` (and grow ``ledger``); returns the
    number of cases per split.

    Fails with :class:`MissingCasesError`, writing nothing, when more than ``max_missing`` of the
    cases the ledger recorded for this dataset are absent from the store.
    """
    table = CaseTable.from_stores([store])
    fixed, carried = _read_ledger(ledger, table, seed, fractions, max_missing)
    fixed = fixed.override(Fixed.from_table(previous))
    split = assign_codes(table, fractions, seed, fixed)
    table.write(out, split)
    if ledger:
        _write_ledger(ledger, table, split, carried, fixed, seed, fractions)
    log.info("%s: %s", out, _counts(split))
    return _counts(split)


def split_corpus(stores, dataset_splits, out, corpus: dict, seed: int, previous=None, ledger=None,
                 max_missing: float = 1.0) -> dict[str, int]:
    """Write the corpus table: cases of every finetune store, their datasets' test cases held out;
    returns the number of cases per split.

    ``corpus`` is the config's ``corpus`` section (fractions and nested variants). Held-out cases
    are in the table as ``test`` but outside the fractions, which apply to the free cases only
    (with 100 held-out and 1000 free cases, 10 % val is 100 cases). ``ledger`` and
    ``max_missing`` work as in :func:`split_dataset`, per dataset of ``stores``.
    """
    fractions = corpus["fractions"]
    table = CaseTable.from_stores(stores)
    fixed, carried = _read_ledger(ledger, table, seed, fractions, max_missing, datasets=table.datasets)
    fixed = fixed.override(Fixed.from_table(previous))
    held_out = _held_out(dataset_splits)
    split = assign_codes(table, fractions, seed, fixed, held_out)
    variants = {f"in_{name}": variant_mask(table, split, variant, seed, fractions)
                for name, variant in corpus["variants"].items()}
    table.write(out, split, variants)
    if ledger:
        _write_ledger(ledger, table, split, carried, fixed.override(held_out), seed, fractions)
    log.info("%s: %s (test patients of the evaluation splits, held out: %d)", out, _counts(split),
             len(held_out.keys))
    return _counts(split)
