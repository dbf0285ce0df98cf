"""How per-object results become dataset numbers: hierarchical means, bootstrap CIs, NoC.

Every dataset number is a mean over classes of means over cases of means over the objects (and
seeds) of that case and class, so an image with many small objects does not outweigh one with a
single large object (SPEC 3.4: average per image -> class -> dataset). Confidence intervals
resample cases, the independent units of a dataset.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from medpipe.metrics import bootstrap_ci, noc


def hierarchical_mean(frame: pd.DataFrame, value: str = "dice") -> float:
    """Mean over classes of the mean over cases of the per-(case, class) mean of ``value``."""
    if frame.empty:
        raise ValueError("hierarchical_mean: no rows")
    per_case = frame.groupby(["class_id", "case"])[value].mean()
    return float(per_case.groupby(level="class_id").mean().mean())


def bootstrap_dataset_mean(frame: pd.DataFrame, value: str = "dice", n_boot: int = 1000, seed: int = 0):
    """``(mean, low, high)``: the hierarchical mean with a 95% CI from resampling cases."""
    per_case = frame.groupby(["case", "class_id"])[value].mean().reset_index()
    cases = per_case["case"].unique()
    table = per_case.pivot(index="case", columns="class_id", values=value).loc[cases]
    values = table.to_numpy()

    def statistic(index_like):
        rows = values[index_like.astype(int)]
        with warnings.catch_warnings():  # a resample can miss every case of a rare class: that class drops out
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(np.nanmean(rows, axis=0)))

    return bootstrap_ci(np.arange(len(cases)), statistic=statistic, n_boot=n_boot, rng=np.random.default_rng(seed))


def noc_per_object(frame: pd.DataFrame, thresholds=(0.85, 0.90)) -> pd.DataFrame:
    """NoC@t per object, start, masks, seed and model from a 2D per-iteration table.

    Capped at the number of interactions run (initial prompt + corrections): an object that never
    reaches t counts as that cap.
    """
    keys = ["model", "dataset", "case", "class_id", "class", "object", "start", "masks", "seed"]
    rows = []
    for key, group in frame.sort_values("iteration").groupby(keys, sort=False):
        dices = group["dice"].to_numpy()
        rows.append({**dict(zip(keys, key)), **{f"noc{int(round(t * 100))}": noc(dices, t) for t in thresholds},
                     "cap": len(dices)})
    return pd.DataFrame(rows)
