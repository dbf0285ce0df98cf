"""Writing the split tables: one dataset (``medpipe split``) and the finetuning corpus (``split-corpus``),
with the ledger that keeps every earlier assignment."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medpipe.splits.assign import assign_codes, variant_mask
from medpipe.splits.common import (
    SEP,
    SPLITS,
    MissingCasesError,
    SplitError,
    _validate_fractions,
)
from medpipe.splits.table import CaseTable, Fixed, _groups, read_table, write_table

log = logging.getLogger(__name__)


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


def evaluated_datasets(datasets: dict) -> set[str]:
    """The datasets of a config's ``datasets`` section that have a role besides ``finetune``: only
    their test cases are held out of the corpus (an evaluation must never see a training image); a
    dataset whose only role is ``finetune`` gives the corpus every case (the paper's 90 %)."""
    return {name for name, spec in datasets.items() if set(spec.get("roles", [])) - {"finetune"}}


def _held_out(dataset_splits, evaluated: set[str] | None = None) -> Fixed:
    """The patients of every test case of the given per-dataset split tables, of the datasets in
    ``evaluated`` only (``None``: of every table given)."""
    held_out = Fixed.empty()
    for path in dataset_splits:
        if not Path(path).is_file():
            raise SplitError(f"{path}: split table does not exist")
        test = Fixed.from_table(path, only="test")
        if evaluated is not None and len(test.keys):
            names = np.char.partition(test.keys, SEP)[:, 0]
            keep = np.isin(names, np.array(sorted(n.encode() for n in evaluated) or [b""]))
            test = Fixed(test.keys[keep], test.codes[keep])
        held_out = held_out.override(test)
    return held_out


def _free_stale_tests(fixed: Fixed, held_out: Fixed) -> Fixed:
    """``fixed`` without its ``test`` patients that are not held out now. When the corpus's own
    fractions have no test split (the default), such a patient was held out by an earlier rule (a
    finetune-only dataset before the 90 % rule) or of a dataset no longer evaluated: assigned afresh."""
    stale = (fixed.codes == SPLITS.index("test")) & (held_out.lookup(fixed.keys) < 0)
    if stale.any():
        log.warning("%d patients recorded as held-out test cases are not held out any more; they are assigned afresh",
                    int(stale.sum()))
    return Fixed(fixed.keys[~stale], fixed.codes[~stale])


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
                 max_missing: float = 1.0, evaluated: set[str] | None = None) -> dict[str, int]:
    """Write the corpus table: cases of every finetune store, the test cases of the evaluated
    datasets held out; returns the number of cases per split.

    ``corpus`` is the config's ``corpus`` section (fractions and nested variants). Held-out cases
    are in the table as ``test`` but outside the fractions, which apply to the free cases only
    (with 100 held-out and 1000 free cases, 10 % val is 100 cases). ``evaluated``: the datasets
    whose test cases are held out (:func:`evaluated_datasets` of the config; a dataset whose only
    role is ``finetune`` loses nothing, so the full corpus variant trains on 90 % of it and p60 on
    50 %, as the paper); ``None`` holds out the test cases of every table in ``dataset_splits``.
    ``ledger`` and ``max_missing`` work as in :func:`split_dataset`, per dataset of ``stores``.
    """
    fractions = corpus["fractions"]
    table = CaseTable.from_stores(stores)
    fixed, carried = _read_ledger(ledger, table, seed, fractions, max_missing, datasets=table.datasets)
    held_out = _held_out(dataset_splits, evaluated)
    fixed = fixed.override(Fixed.from_table(previous))
    kept = _free_stale_tests(fixed, held_out) if not float(fractions.get("test", 0.0)) else fixed
    split = assign_codes(table, fractions, seed, kept, held_out)
    variants = {f"in_{name}": variant_mask(table, split, variant, seed, fractions)
                for name, variant in corpus["variants"].items()}
    table.write(out, split, variants)
    if ledger:  # absent entries follow their patient's split of this run (a freed patient's new one)
        now = fixed.override(held_out).override(Fixed.from_cases(table, split, str(out)))
        _write_ledger(ledger, table, split, carried, now, seed, fractions)
    log.info("%s: %s (test patients of the evaluation splits, held out: %d)", out, _counts(split),
             len(held_out.keys))
    return _counts(split)
