"""Leakage-free, stable train/val/test splits.

Rules (SPEC §2 and the reference code's defects in §3.8):
- grouped: all cases of a patient land in one split (the group key is dataset + patient id);
- stratified: modalities are visited one after the other and each patient group goes to the split
  furthest below its target over all cases assigned so far, so the whole table is within one
  patient group of its fractions and each modality within two (a dataset, one modality, within
  one); many small modalities together still fill a small split;
- seeded and deterministic: patients are visited in the order of a keyed hash of (seed, group),
  which does not depend on Python's hash seed, file order or the other cases present;
- stable: assignments read from an earlier table are kept, so adding cases never moves old ones.
  The split rules keep a *ledger* of every assignment ever made: it only grows, so a case that is
  absent for a run (a file moved, a share not mounted) gets its old split back when it returns.
  A dataset that lost more than ``splits.max_missing`` of its ledger's cases is an error, not a
  smaller split (docs/reliability.md).

The finetuning corpus is the union of every dataset with role ``finetune``. A case that is in the
test split of its own dataset is held out of the corpus (split ``test``), so finetuning never sees
an evaluation test image; the corpus fractions apply to the other, *free* cases. Paper variants
(full = 90/10, p60 = 50 % train + 10 % val) are nested subsets of the corpus train/val parts,
recorded as ``in_<variant>`` columns.
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


def assign_splits(
    cases: pd.DataFrame,
    fractions: dict,
    seed: int,
    fixed: dict[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """Assign each case a split; returns ``cases`` with a ``split`` column.

    ``cases`` has columns dataset, case_id, patient_id, modality. ``fixed`` maps
    (dataset, patient_id) to a split that must be kept (earlier assignments, held-out test cases).
    Modalities are visited in sorted order, the free patients of each in hash order; each goes to
    the split whose case count, over everything assigned so far, is furthest below its target. So
    every split of the table ends within one patient group of ``fraction * n_cases``, and of each
    modality within two: a modality too small to reach a small split alone (three patients, 10 %
    val) still contributes to it together with the others.
    """
    fractions = _validate_fractions(fractions)
    fixed = dict(fixed or {})
    duplicated = cases.duplicated(["dataset", "case_id"])
    if duplicated.any():
        raise SplitError(f"duplicate case ids: {cases.loc[duplicated, 'case_id'].tolist()}")
    group_split: dict[tuple[str, str], str] = {}
    counts = {name: 0 for name in SPLITS}  # over all strata visited so far
    for modality, stratum in cases.groupby("modality", sort=True):
        sizes = stratum.groupby(["dataset", "patient_id"]).size()
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
    out["split"] = pd.Series([group_split[(d, p)] for d, p in zip(out["dataset"], out["patient_id"])],
                             index=out.index, dtype=object)
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


def select_variant(table: pd.DataFrame, variant: dict, seed: int, fractions: dict) -> pd.Series:
    """Boolean mask of a nested corpus subset: ``variant['train']`` of the free cases from train, etc.

    ``fractions`` are the corpus fractions the table was split with: a variant takes the share
    ``variant[part] / fractions[part]`` of each modality's ``part`` cases, so a variant equal to the
    fractions is the whole train/val corpus and p60 (0.5 of 0.9) is 5/9 of every modality's train
    cases. Patients are taken in hash order within each modality and split, so a smaller variant is
    always a subset of a larger one and the choice is stable.
    """
    fractions = _validate_fractions(fractions)
    chosen = pd.Series(False, index=table.index)
    for part in ("train", "val"):
        share = float(variant[part]) / fractions[part] if fractions[part] > 0 else 1.0
        for modality, stratum in table[table["split"] == part].groupby("modality"):
            target = share * len(stratum)
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


def _ledger_rows(ledger: Path | None, seed: int, fractions: dict) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``(every row of the ledger, the rows still valid)``: valid are those recorded under the same
    seed and fractions (other ones were assigned under other rules and are not kept)."""
    table = read_table(ledger) if ledger else None
    if table is None:
        return None, None
    meta = read_table(ledger.with_suffix(".meta.tsv"))
    expected = {"seed": str(seed), **{k: str(float(v)) for k, v in _validate_fractions(fractions).items()}}
    if meta is None or dict(zip(meta["key"], meta["value"])) != expected:
        log.warning("%s: %s; earlier assignments are not kept", ledger,
                    "seed or fractions changed" if meta is not None else "its .meta.tsv is missing")
        return table, None
    return table, table


def check_missing(recorded: pd.DataFrame | None, cases: pd.DataFrame, max_missing: float, where) -> None:
    """Refuse a run in which a dataset lost more than ``max_missing`` of the cases ``recorded`` for it.

    Every dataset in ``recorded`` is checked; the corpus passes only the datasets it was given
    stores of (a dataset taken out of the config is a decision, one whose files vanished is not).
    """
    if recorded is None or recorded.empty:
        return
    present = set(zip(cases["dataset"], cases["case_id"]))
    for dataset, rows in recorded.groupby("dataset", sort=True):
        known = set(rows["case_id"])
        missing = sorted(c for c in known if (dataset, c) not in present)
        share = len(missing) / len(known)
        if missing and share > max_missing + 1e-12:
            raise MissingCasesError(
                f"{where}: {len(missing)} of the {len(known)} cases of dataset {dataset!r} recorded there are "
                f"absent now ({share:.0%} > splits.max_missing {max_missing:.0%}), e.g. {missing[:5]}; are its "
                "files reachable (a share not mounted, a moved folder)? Nothing was written. If the cases were "
                "removed on purpose, raise splits.max_missing (1 allows any loss; the ledger keeps their splits "
                "either way)"
            )


def _grow_ledger(ledger: Path, kept: pd.DataFrame | None, table: pd.DataFrame, seed: int, fractions: dict) -> None:
    """Write the ledger: the cases assigned now plus every earlier valid entry absent now (never shrinks)."""
    rows = table[COLUMNS]
    if kept is not None and not kept.empty:
        now = set(zip(rows["dataset"], rows["case_id"]))
        absent = kept[[(d, c) not in now for d, c in zip(kept["dataset"], kept["case_id"])]]
        rows = pd.concat([rows, absent[COLUMNS]], ignore_index=True)
    rows = rows.sort_values(["dataset", "case_id"]).reset_index(drop=True)
    meta = {"seed": str(seed), **{k: str(float(v)) for k, v in _validate_fractions(fractions).items()}}
    write_table(rows, ledger)
    write_table(pd.DataFrame({"key": list(meta), "value": list(meta.values())}), ledger.with_suffix(".meta.tsv"))


def split_dataset(store, out, fractions: dict, seed: int, previous=None, ledger=None,
                  max_missing: float = 1.0) -> pd.DataFrame:
    """Write the split table of one dataset store to ``out`` (and grow ``ledger``); returns it.

    Fails with :class:`MissingCasesError`, writing nothing, when more than ``max_missing`` of the
    cases the ledger recorded for this dataset are absent from the store.
    """
    ledger = Path(ledger) if ledger else None
    cases = cases_of_store(store)
    recorded, kept = _ledger_rows(ledger, seed, fractions)
    check_missing(recorded, cases, max_missing, ledger)
    fixed = {**fixed_from_table(kept), **fixed_from_table(read_table(previous))}
    table = assign_splits(cases, fractions, seed, fixed)
    write_table(table[COLUMNS], out)
    if ledger:
        _grow_ledger(ledger, kept, table, seed, fractions)
    log.info("%s: %s", out, table["split"].value_counts().to_dict())
    return table


def held_out_groups(dataset_splits) -> set[tuple[str, str]]:
    """(dataset, patient) of every test case of the given per-dataset split tables."""
    groups: set[tuple[str, str]] = set()
    for path in dataset_splits:
        table = read_split_table(path, required=("dataset", "patient_id", "split"))
        groups.update(fixed_from_table(table[table["split"] == "test"]))
    return groups


def split_corpus(stores, dataset_splits, out, corpus: dict, seed: int, previous=None, ledger=None,
                 max_missing: float = 1.0) -> pd.DataFrame:
    """Write the corpus table: cases of every finetune store, their datasets' test cases held out.

    ``corpus`` is the config's ``corpus`` section (fractions and nested variants). Held-out cases
    are in the table as ``test`` but outside the fractions, which apply to the free cases only
    (with 100 held-out and 1000 free cases, 10 % val is 100 cases). ``ledger`` and
    ``max_missing`` work as in :func:`split_dataset`, per dataset.
    """
    ledger = Path(ledger) if ledger else None
    fractions = corpus["fractions"]
    cases = pd.concat([cases_of_store(path) for path in stores], ignore_index=True)
    recorded, kept = _ledger_rows(ledger, seed, fractions)
    if recorded is not None:  # a dataset taken out of the corpus is not "missing"; an empty store is
        recorded = recorded[recorded["dataset"].isin({DatasetStore(path).name for path in stores})]
    check_missing(recorded, cases, max_missing, ledger)
    held_out = held_out_groups(dataset_splits)
    is_held = pd.Series([(d, p) in held_out for d, p in zip(cases["dataset"], cases["patient_id"])],
                        index=cases.index, dtype=bool)
    fixed = {**fixed_from_table(kept), **fixed_from_table(read_table(previous))}
    fixed = {group: split for group, split in fixed.items() if group not in held_out}
    free = assign_splits(cases[~is_held], fractions, seed, fixed)
    table = pd.concat([free, cases[is_held].assign(split="test")], ignore_index=True)
    table = table.sort_values(["dataset", "case_id"]).reset_index(drop=True)
    for name, variant in corpus["variants"].items():
        table[f"in_{name}"] = select_variant(table, variant, seed, fractions)
    write_table(table, out)
    if ledger:
        _grow_ledger(ledger, kept, table, seed, fractions)
    log.info("%s: %s (%d held out as test)", out, table["split"].value_counts().to_dict(), int(is_held.sum()))
    return table
