"""Assigning patient groups to splits and choosing nested corpus variants (numpy; pandas wrappers)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from medpipe.splits.common import (
    BLOCK_ROWS,
    SEP,
    SPLITS,
    SplitError,
    _split_codes,
    _validate_fractions,
)
from medpipe.splits.table import CaseTable, Fixed, _groups


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


