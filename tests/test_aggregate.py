"""Aggregation of interactive results: hierarchical means, NoC, paired differences, figures."""

import numpy as np
import pandas as pd
import pytest

from medpipe.aggregate import interactive as agg
from medpipe.config import validate_config
from medpipe.interactive.grid import ORACLE_LABEL, SELECTED_LABEL
from medpipe.metrics import bootstrap_dataset_mean, hierarchical_mean


def rows_2d(model, offset, objects=True):
    """Two cases; case a has two class-1 objects, case b one class-1 and one class-2 object.

    ``objects``: the per-object table; otherwise the union table (one row per case, class, iteration),
    whose class-1 value of case a is not the mean of its objects' (0.65, not 0.6, at iteration 0).
    """
    rows = []
    if objects:
        entries = [("a", 1, 0, [0.5, 0.9]), ("a", 1, 1, [0.7, 0.8]), ("b", 1, 0, [0.3, 0.95]), ("b", 2, 0, [0.6, 0.6])]
    else:
        entries = [("a", 1, None, [0.65, 0.85]), ("b", 1, None, [0.3, 0.95]), ("b", 2, None, [0.6, 0.6])]
    for case, class_id, obj, dices in entries:
        for start in ("point", "box"):
            for masks in ("off", "on"):
                for iteration, d in enumerate(dices):
                    row = {"dataset": "d", "case": case, "class_id": class_id, "class": f"k{class_id}",
                           "start": start, "masks": masks, "iteration": iteration,
                           "dice": d + offset, "seed": 0, "model": model}
                    row.update({"object": obj} if objects else {"n_objects": 2 if case == "a" else 1})
                    rows.append(row)
    return pd.DataFrame(rows)


def test_hierarchical_mean_weights_cases_then_classes():
    frame = rows_2d("m", 0.0)
    first = frame[(frame["iteration"] == 0) & (frame["start"] == "box") & (frame["masks"] == "off")]
    # class 1: case a mean(0.5, 0.7) = 0.6, case b 0.3 -> 0.45; class 2: 0.6 -> dataset (0.45 + 0.6) / 2
    assert hierarchical_mean(first) == pytest.approx(0.525)
    mean, low, high = bootstrap_dataset_mean(first, n_boot=200, seed=0)
    assert mean == pytest.approx(0.525) and low <= mean <= high


def test_aggregate_writes_traceable_tables_and_figures(tmp_path):
    paths, object_paths = [], []
    for name, offset in (("sam", 0.0), ("ft", 0.04)):
        paths.append(tmp_path / f"{name}.tsv")
        rows_2d(name, offset, objects=False).to_csv(paths[-1], sep="\t", index=False)
        object_paths.append(tmp_path / f"{name}.objects.tsv")
        rows_2d(name, offset).to_csv(object_paths[-1], sep="\t", index=False)
    rows3d = []
    for model in ("sam", "ft"):
        for result, dice in ((SELECTED_LABEL, 0.5), (ORACLE_LABEL, 0.6)):
            rows3d.append({"dataset": "v", "split": "test", "case": "x", "class_id": 1, "class": "k", "object": 0,
                           "z_start": 3, "start": "box", "iou_threshold": 0.8, "projection": "mask",
                           "box_extension": 0.0, "dice": dice, "n_slices": 4, "seed": 0, "model": model,
                           "result": result})
    path3d = tmp_path / "r3.tsv"
    pd.DataFrame(rows3d).to_csv(path3d, sep="\t", index=False)
    config = validate_config({"datasets": {"d": {"modality": "ct", "ndim": 2, "images": "x", "labels": "y",
                                                 "classes": {1: "a"}}},
                              "models": {"sam": {"type": "tiny"}, "ft": {"type": "tiny"}}, "aggregate": {"n_boot": 50}})
    out = agg.aggregate(config, paths, object_paths, [path3d], tmp_path / "tables", tmp_path / "figures")

    summary = pd.read_csv(out["summary2d"], sep="\t")
    # the paper's number is the union Dice: class 1 (0.65 + 0.3) / 2, class 2 0.6 -> 0.5375 (the mean of
    # the per-object Dice would give 0.525)
    initial = summary[(summary["model"] == "sam") & (summary["iteration"] == 0) & (summary["start"] == "box")
                      & (summary["masks"] == "off")]
    assert initial["dice"].item() == pytest.approx(0.5375)
    assert len(pd.read_csv(out["objects2d"], sep="\t")) == 2 * 4 * 2 * 2 * 2
    final = summary[(summary["model"] == "ft") & (summary["iteration"] == 1) & (summary["start"] == "box")
                    & (summary["masks"] == "on")]
    # class 1: a 0.85, b 0.95 -> 0.9; class 2: 0.6 -> 0.75, + 0.04 offset
    assert final["dice"].item() == pytest.approx(0.79)
    noc = pd.read_csv(out["noc"], sep="\t")
    sam_noc = noc[(noc["model"] == "sam") & (noc["start"] == "point") & (noc["masks"] == "off")]
    # NoC@85 per object: 2, 2 (cap), 2, 2 (cap) -> all 2; NoC@90: 2, 2(cap), 2, 2(cap)
    assert sam_noc["noc85"].item() == pytest.approx(2.0) and sam_noc["cap"].item() == 2
    diff = pd.read_csv(out["difference"], sep="\t")
    assert set(diff["reference"]) == {"sam"}
    assert np.allclose(diff[diff["model"] == "ft"]["dice_difference"], 0.04)
    assert np.allclose(diff[diff["model"] == "sam"]["dice_difference"], 0.0)
    summary3d = pd.read_csv(out["summary3d"], sep="\t")
    oracle = summary3d[summary3d["result"] == ORACLE_LABEL]
    assert len(oracle) == 2 and np.allclose(oracle["dice"], 0.6)
    assert np.allclose(summary3d[summary3d["result"] == SELECTED_LABEL]["dice"], 0.5)
    for name in ("fig3a_dice_per_iteration", "fig3b_difference", "fig1b_interactive2d", "fig1c_interactive3d",
                 "fig7b_mask_prompts"):
        for ext in ("png", "svg"):
            assert (tmp_path / "figures" / f"{name}.{ext}").stat().st_size > 1000
