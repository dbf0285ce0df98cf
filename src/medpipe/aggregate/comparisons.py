"""Named comparisons of interactive 2D results, paired and with bootstrap CIs (``aggregate.comparisons``).

A comparison names one setting ``a`` (model, start, masks, iteration) and optionally a second one
``b``. Without ``b`` the table gives ``a``'s Dice; with ``b`` the mean of ``a - b`` over pairs of rows
that describe the same thing (dataset, case, class, object where the table has objects, seed),
each pair from one image, so the interval reflects the difference itself, not two noisy means. A
row of one side without a partner is an error, never dropped. Numbers follow the project's means
(:mod:`medpipe.metrics`: per case and class, then class, then dataset; "all" = mean over datasets);
the 95% CI resamples the cases of every dataset (stratified by dataset), ``n_boot`` times.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from medpipe.tables import MissingResultError

COLUMNS = ["comparison", "a", "b", "dataset", "dice_a", "dice_b", "value", "ci_low", "ci_high", "n_cases",
           "n_pairs"]


def _label(side: dict) -> str:
    return f"{side['model']} / {side['start']} start / masks {side['masks']} / iteration {side['iteration']}"


def _select(rows: pd.DataFrame, side: dict, name: str) -> tuple[pd.DataFrame, dict]:
    side = {"masks": "off", "iteration": 0, **side}
    part = rows[(rows["model"] == side["model"]) & (rows["start"] == side["start"]) & (rows["masks"] == side["masks"])]
    if part.empty:
        raise MissingResultError(f"aggregate.comparisons.{name}: no 2D results for {side['model']} with start "
                                 f"{side['start']}, masks {side['masks']}")
    iteration = int(part["iteration"].max()) if side["iteration"] == "last" else int(side["iteration"])
    part = part[part["iteration"] == iteration]
    if part.empty:
        raise MissingResultError(f"aggregate.comparisons.{name}: {side['model']} has no iteration {iteration}")
    return part, {**side, "iteration": iteration}


def _per_case(frame: pd.DataFrame, value: str) -> dict[str, np.ndarray]:
    """Per dataset: a (cases x classes) array of per-(case, class) means of ``value`` (NaN: class absent)."""
    out = {}
    for dataset, group in frame.groupby("dataset", sort=True):
        table = group.groupby(["case", "class_id"])[value].mean().unstack("class_id")
        out[dataset] = table.to_numpy(dtype=float)
    return out


def _hierarchical(values: np.ndarray) -> float:
    with warnings.catch_warnings():  # a resample can miss every case of a rare class: that class drops out
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.nanmean(values, axis=0)))


def _bootstrap(tables: dict[str, np.ndarray], n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean over datasets of the hierarchical means, and its 95% CI from resampling each dataset's cases."""
    estimate = float(np.mean([_hierarchical(t) for t in tables.values()]))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        stats[i] = np.mean([_hierarchical(t[rng.integers(0, len(t), len(t))]) for t in tables.values()])
    low, high = np.quantile(stats, [0.025, 0.975])
    return estimate, float(low), float(high)


def compare(rows: pd.DataFrame, name: str, spec: dict, n_boot: int, seed: int) -> list[dict]:
    """The rows of one comparison: one per dataset and one for ``all`` datasets."""
    a, side_a = _select(rows, spec["a"], name)
    pair_keys = [column for column in ("dataset", "case", "class_id", "object", "seed") if column in rows.columns]
    if spec.get("b"):
        b, side_b = _select(rows, spec["b"], name)
        merged = a[pair_keys + ["dice"]].merge(b[pair_keys + ["dice"]], on=pair_keys, how="outer",
                                              suffixes=("_a", "_b"), indicator=True)
        alone = merged[merged["_merge"] != "both"]
        if len(alone):
            raise MissingResultError(f"aggregate.comparisons.{name}: {len(alone)} results have no partner, e.g. "
                                     f"{alone.iloc[0][pair_keys].to_dict()}")
        merged["value"] = merged["dice_a"] - merged["dice_b"]
        label_b = _label(side_b)
    else:
        merged = a[pair_keys + ["dice"]].rename(columns={"dice": "dice_a"})
        merged["dice_b"] = np.nan
        merged["value"] = merged["dice_a"]
        label_b = ""
    out = []
    datasets = sorted(set(merged["dataset"]))
    for dataset in [*datasets, "all"]:
        part = merged if dataset == "all" else merged[merged["dataset"] == dataset]
        value, low, high = _bootstrap(_per_case(part, "value"), n_boot, seed)
        dice_a = float(np.mean([_hierarchical(t) for t in _per_case(part, "dice_a").values()]))
        dice_b = (float(np.mean([_hierarchical(t) for t in _per_case(part, "dice_b").values()]))
                  if spec.get("b") else np.nan)
        out.append({"comparison": name, "a": _label(side_a), "b": label_b, "dataset": dataset, "dice_a": dice_a,
                    "dice_b": dice_b, "value": value, "ci_low": low, "ci_high": high,
                    "n_cases": int(part[["dataset", "case"]].drop_duplicates().shape[0]), "n_pairs": len(part)})
    return out


def comparison_table(rows: pd.DataFrame, comparisons: dict, n_boot: int, seed: int) -> pd.DataFrame:
    """Every configured comparison (``aggregate.comparisons``: name -> {a, b}) as table rows."""
    out = []
    for name, spec in comparisons.items():
        out += compare(rows, name, spec, n_boot, seed)
    return pd.DataFrame(out, columns=COLUMNS)
