"""Cases as numpy arrays (no Python object per case) and split tables read and written in blocks.

:class:`CaseTable` holds dataset, case, patient and modality as byte strings; :class:`Fixed` holds
assignments that must be kept (a ledger, a frozen table, held-out test patients).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medpipe import files
from medpipe.splits.common import (
    COLUMNS,
    READ_ROWS,
    SEP,
    SPLITS,
    WRITE_ROWS,
    SplitError,
    _decode,
    _encode,
    _sorted,
    _split_codes,
)
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)


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
        per_case = [store.case_modalities() for store in stores]  # a corpus entry: one modality per case
        modalities = sorted({m.decode() for column in per_case for m in np.unique(column).tolist()})
        names = np.array([m.encode() for m in modalities], dtype=bytes) if modalities else np.zeros(0, "S1")
        parts = []
        for store, column in zip(stores, per_case):
            cases, patients = store.case_index()
            parts.append((np.full(len(cases), datasets.index(store.name), dtype=np.int32),
                          np.searchsorted(names, column).astype(np.int32), cases, patients))
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
