"""aggregate.comparisons: paired differences and single settings with bootstrap CIs, by hand."""

import numpy as np
import pandas as pd
import pytest

from medpipe.aggregate.comparisons import comparison_table
from medpipe.tables import MissingResultError


def _rows():
    """Two datasets; model m and the base b; point start, iterations 0 and 2; two cases each."""
    rows = []
    values = {  # (dataset, case, class) -> Dice of (b it0, m it0, m it2)
        ("d1", "c1", 1): (0.1, 0.5, 0.7), ("d1", "c2", 1): (0.3, 0.5, 0.9),
        ("d1", "c1", 2): (0.2, 0.2, 0.4),
        ("d2", "c1", 1): (0.0, 0.4, 0.6), ("d2", "c2", 1): (0.2, 0.2, 0.2),
    }
    for (dataset, case, cls), (base, model0, model2) in values.items():
        common = {"dataset": dataset, "case": case, "class_id": cls, "class": f"k{cls}", "start": "point",
                  "masks": "off", "seed": 0}
        rows += [{**common, "model": "b", "iteration": 0, "dice": base},
                 {**common, "model": "b", "iteration": 2, "dice": base},
                 {**common, "model": "m", "iteration": 0, "dice": model0},
                 {**common, "model": "m", "iteration": 2, "dice": model2}]
    return pd.DataFrame(rows)


def test_paired_difference_and_single_setting_by_hand():
    comparisons = {
        "gain": {"a": {"model": "m", "start": "point"}, "b": {"model": "b", "start": "point"}},
        "corrections": {"a": {"model": "m", "start": "point", "iteration": "last"},
                        "b": {"model": "m", "start": "point", "iteration": 0}},
        "base": {"a": {"model": "b", "start": "point"}},
    }
    table = comparison_table(_rows(), comparisons, n_boot=200, seed=0).set_index(["comparison", "dataset"])
    # d1: per class: class 1 = mean(0.4, 0.2) = 0.3, class 2 = 0.0 -> 0.15; d2: mean(0.4, 0.0) = 0.2
    assert table.loc[("gain", "d1"), "value"] == pytest.approx(0.15)
    assert table.loc[("gain", "d2"), "value"] == pytest.approx(0.2)
    assert table.loc[("gain", "all"), "value"] == pytest.approx(0.175)
    assert table.loc[("gain", "all"), "dice_a"] - table.loc[("gain", "all"), "dice_b"] == pytest.approx(0.175)
    assert table.loc[("gain", "all"), "n_pairs"] == 5 and table.loc[("gain", "all"), "n_cases"] == 4
    low, high = table.loc[("gain", "all"), ["ci_low", "ci_high"]]
    assert low <= 0.175 <= high and low >= 0.0  # every pair's difference is >= 0
    assert table.loc[("corrections", "all"), "value"] == pytest.approx(np.mean([(0.3 + 0.2) / 2, 0.1]))
    assert "iteration 2" in table.loc[("corrections", "all"), "a"]
    assert table.loc[("base", "d1"), "value"] == pytest.approx(((0.1 + 0.3) / 2 + 0.2) / 2)
    assert np.isnan(table.loc[("base", "d1"), "dice_b"]) and table.loc[("base", "d1"), "b"] == ""
    # a single case per dataset: a zero-width interval
    one = _rows()
    one = one[one["case"] == "c1"]
    single = comparison_table(one, {"gain": comparisons["gain"]}, n_boot=50, seed=0).set_index("dataset")
    assert single.loc["d2", "ci_low"] == single.loc["d2", "ci_high"] == pytest.approx(0.4)


def test_a_result_without_partner_is_an_error():
    rows = _rows()
    rows = rows[~((rows["model"] == "b") & (rows["case"] == "c2") & (rows["dataset"] == "d2"))]
    with pytest.raises(MissingResultError, match="no partner"):
        comparison_table(rows, {"x": {"a": {"model": "m", "start": "point"}, "b": {"model": "b", "start": "point"}}},
                         n_boot=10, seed=0)
    with pytest.raises(MissingResultError, match="no 2D results"):
        comparison_table(rows, {"x": {"a": {"model": "m", "start": "box"}}}, n_boot=10, seed=0)
