"""Leakage-free, stable train/val/test splits.

Rules (SPEC §2 and the reference code's defects in §3.8):
- grouped: all cases of a patient land in one split (the group key is dataset + patient id);
- stratified: fractions are met within each modality (at most one patient group off target);
- seeded and deterministic: patients are visited in the order of a keyed hash of (seed, group),
  which does not depend on Python's hash seed, file order or the other cases present;
- stable: assignments read from an earlier table are kept, so adding cases never moves old ones.
  ``medpipe split`` keeps such a ledger next to its output by default.

The finetuning corpus is the union of every dataset with role ``finetune``. A case that is in the
test split of its own dataset is held out of the corpus (split ``test``), so finetuning never sees
an evaluation test image; paper variants (full = 90/10, p60 = 50 % train + 10 % val) are nested
subsets of the corpus train/val parts, recorded as ``in_<variant>`` columns.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pandas as pd

from medpipe import files
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ["dataset", "case_id", "patient_id", "modality", "split"]


class SplitError(ValueError):
    """Inconsistent split input (e.g. a patient split across two earlier splits)."""


def _rank_key(seed: int, *parts: str) -> str:
    """A stable pseudo-random order key: sha256 of the seed and the group identity."""
    return hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).hexdigest()


def _validate_fractions(fractions: dict) -> dict[str, float]:
    values = {name: float(fractions.get(name, 0.0)) for name in SPLITS}
    if any(v < 0 for v in values.values()) or abs(sum(values.values()) - 1.0) > 1e-6:
        raise SplitError(f"split fractions must be >= 0 and sum to 1, got {values}")
    return values


def assign_splits(
    cases: pd.DataFrame,
    fractions: dict,
    seed: int,
    fixed: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Assign each case a split; returns ``cases`` with a ``split`` column.

    ``cases`` has columns dataset, case_id, patient_id, modality. ``fixed`` maps
    (dataset, patient_id) to a split that must be kept (earlier assignments, held-out test cases).
    Within each modality, the remaining patients are visited in hash order and each goes to the
    split whose case count is furthest below its target, so every split ends within one patient
    group of ``fraction * n_cases``.
    """
    fractions = _validate_fractions(fractions)
    fixed = dict(fixed or {})
    duplicated = cases.duplicated(["dataset", "case_id"])
    if duplicated.any():
        raise SplitError(f"duplicate case ids: {cases.loc[duplicated, 'case_id'].tolist()}")
    group_split: dict[tuple[str, str], str] = {}
    for modality, stratum in cases.groupby("modality", sort=True):
        sizes = stratum.groupby(["dataset", "patient_id"]).size()
        counts = {name: 0 for name in SPLITS}
        free = []
        for group, size in sizes.items():
            if group in fixed:
                counts[fixed[group]] += int(size)
                group_split[group] = fixed[group]
            else:
                free.append((_rank_key(seed, modality, *group), group, int(size)))
        total = sum(counts.values())
        for _, group, size in sorted(free):
            total += size
            deficits = {name: fractions[name] * total - counts[name] for name in SPLITS}
            choice = max(SPLITS, key=lambda name: (deficits[name], -SPLITS.index(name)))
            counts[choice] += size
            group_split[group] = choice
    out = cases.copy()
    out["split"] = [group_split[(d, p)] for d, p in zip(out["dataset"], out["patient_id"])]
    return out.sort_values(["dataset", "case_id"]).reset_index(drop=True)


def fixed_from_table(table: pd.DataFrame | None) -> dict[tuple[str, str], str]:
    """Patient-level assignments from an earlier split table (refusing patients split in two)."""
    if table is None or table.empty:
        return {}
    fixed: dict[tuple[str, str], str] = {}
    for (dataset, patient), splits in table.groupby(["dataset", "patient_id"])["split"]:
        values = set(splits)
        if len(values) != 1:
            raise SplitError(f"patient {patient!r} of {dataset!r} is in several splits: {sorted(values)}")
        fixed[(str(dataset), str(patient))] = values.pop()
    return fixed


def select_variant(table: pd.DataFrame, variant: dict, seed: int) -> pd.Series:
    """Boolean mask of a nested corpus subset: ``variant['train']`` of all cases from train, etc.

    Patients are taken in hash order within each modality and split, so a smaller variant is
    always a subset of a larger one and the choice is stable.
    """
    total_by_modality = table.groupby("modality").size()
    chosen = pd.Series(False, index=table.index)
    for part in ("train", "val"):
        for modality, stratum in table[table["split"] == part].groupby("modality"):
            target = float(variant[part]) * int(total_by_modality[modality])
            taken = 0
            groups = stratum.groupby(["dataset", "patient_id"]).groups
            for _, group in sorted((_rank_key(seed, "variant", modality, *g), g) for g in groups):
                if taken >= target - 1e-9:
                    break
                index = groups[group]
                chosen[index] = True
                taken += len(index)
    return chosen


def cases_of_store(store_path: str | os.PathLike) -> pd.DataFrame:
    store = DatasetStore(store_path)
    rows = []
    for case_id in store.case_ids:
        info = store.info(case_id)
        rows.append((store.name, case_id, info.patient_id, info.modality))
    return pd.DataFrame(rows, columns=COLUMNS[:4])


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


def _ledger_fixed(ledger: Path, seed: int, fractions: dict) -> dict:
    """Assignments recorded earlier under the same seed and fractions (else none)."""
    table = read_table(ledger)
    meta = read_table(ledger.with_suffix(".meta.tsv"))
    if table is None or meta is None:
        return {}
    expected = {"seed": str(seed), **{k: str(float(v)) for k, v in _validate_fractions(fractions).items()}}
    if dict(zip(meta["key"], meta["value"])) != expected:
        log.warning("%s: seed or fractions changed; earlier assignments are not kept", ledger)
        return {}
    return fixed_from_table(table)


def _update_ledger(ledger: Path, table: pd.DataFrame, seed: int, fractions: dict) -> None:
    meta = {"seed": str(seed), **{k: str(float(v)) for k, v in _validate_fractions(fractions).items()}}
    write_table(table, ledger)
    write_table(pd.DataFrame({"key": list(meta), "value": list(meta.values())}), ledger.with_suffix(".meta.tsv"))


def _fixed(previous, ledger, seed: int, fractions: dict) -> dict:
    """Assignments to keep: the ledger's (same seed and fractions), overridden by a frozen table's."""
    fixed = fixed_from_table(read_table(previous))
    if ledger:
        fixed = {**_ledger_fixed(Path(ledger), seed, fractions), **fixed}
    return fixed


def split_dataset(store, out, fractions: dict, seed: int, previous=None, ledger=None) -> pd.DataFrame:
    """Write the split table of one dataset store to ``out`` (and update ``ledger``); returns it."""
    table = assign_splits(cases_of_store(store), fractions, seed, _fixed(previous, ledger, seed, fractions))
    write_table(table[COLUMNS], out)
    if ledger:
        _update_ledger(Path(ledger), table[COLUMNS], seed, fractions)
    log.info("%s: %s", out, table["split"].value_counts().to_dict())
    return table


def split_corpus(stores, dataset_splits, out, corpus: dict, seed: int, previous=None, ledger=None) -> pd.DataFrame:
    """Write the corpus table: cases of every finetune store, their datasets' test cases held out.

    ``corpus`` is the config's ``corpus`` section (fractions and nested variants).
    """
    cases = pd.concat([cases_of_store(path) for path in stores], ignore_index=True)
    fixed = _fixed(previous, ledger, seed, corpus["fractions"])
    for path in dataset_splits:
        held_out = read_table(path)
        held_out = held_out[held_out["split"] == "test"]
        fixed.update({group: "test" for group in fixed_from_table(held_out)})
    table = assign_splits(cases, corpus["fractions"], seed, fixed)
    for name, variant in corpus["variants"].items():
        table[f"in_{name}"] = select_variant(table, variant, seed)
    write_table(table, out)
    if ledger:
        _update_ledger(Path(ledger), table[COLUMNS], seed, corpus["fractions"])
    log.info("%s: %s", out, table["split"].value_counts().to_dict())
    return table
