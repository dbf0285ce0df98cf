"""Aggregation of semantic results: seed statistics, paired tests, Holm correction, figures."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medpipe.aggregate.semantic import aggregate, holm, load_results, paired_tests, seed_statistics, setting_label
from medpipe.semantic.evaluate import RESULT_COLUMNS, write_table


def _rows(method, backbone, init, dataset, seed, dices):
    """dices: {case: [dice class 1, dice class 2]}"""
    return [{"method": method, "backbone": backbone, "decoder_init": init, "dataset": dataset, "seed": seed,
             "case_id": case, "class_id": k + 1, "class_name": f"c{k + 1}", "dice": d}
            for case, values in dices.items() for k, d in enumerate(values)]


@pytest.fixture
def tables(tmp_path):
    paths = []
    cases = [f"c{i}" for i in range(6)]
    for seed in (0, 1):
        a = {c: [0.5 + 0.05 * i + 0.01 * seed, 0.7] for i, c in enumerate(cases)}
        b = {c: [0.3 + 0.05 * i, 0.5] for i, c in enumerate(cases)}  # always 0.2 below a (class means)
        for (m, bb, init, values) in (("sam_unetr", "sam", "random", a), ("nnunet", "none", "none", b)):
            path = tmp_path / f"{m}_{seed}.tsv"
            write_table(_rows(m, bb, init, "d2", seed, values), path)
            paths.append(path)
    return paths


def test_setting_labels():
    assert setting_label("sam_unetr", "medicosam", "pretrained") == "SAM-UNETR medicosam, pretrained decoder"
    assert setting_label("ma_sam", "sam", "random") == "MA-SAM sam"
    assert setting_label("nnunet", "none", "none") == "nnU-Net"


def test_seed_statistics_by_hand(tables):
    frame = load_results(tables)
    summary = seed_statistics(frame).set_index("setting")
    sam = summary.loc["SAM-UNETR sam, random decoder"]
    # seed s: case i scores ((0.5 + 0.05 i + 0.01 s) + 0.7) / 2; mean over i = 0.6 + 0.0625 + 0.005 s
    seed_means = np.array([0.6625, 0.6675])
    assert sam.n_seeds == 2
    assert sam.mean_dice == pytest.approx(seed_means.mean())
    assert sam.std_dice == pytest.approx(seed_means.std(ddof=1))
    half = stats.t.ppf(0.975, 1) * seed_means.std(ddof=1) / np.sqrt(2)
    assert (sam.ci_low == pytest.approx(seed_means.mean() - half)
            and sam.ci_high == pytest.approx(seed_means.mean() + half))
    assert summary.loc["nnU-Net"].std_dice == 0.0


def test_cases_without_ground_truth_for_a_class_are_skipped_class_first(tmp_path):
    """The reference's dataset number: per class the mean over the cases that have the class
    (NaN rows are not scores), then the mean over classes."""
    values = {"c0": [1.0, np.nan], "c1": [0.0, 0.5], "c2": [0.5, np.nan]}
    path = tmp_path / "t.tsv"
    write_table(_rows("sam_unetr", "sam", "random", "d2", 0, values), path)
    frame = load_results([path])
    summary = seed_statistics(frame).iloc[0]
    # class 1: (1 + 0 + 0.5) / 3 = 0.5; class 2: 0.5 (one case) -> 0.5; a mean over case means would
    # give (1 + 0.25 + 0.5) / 3 = 0.583, and scoring the missing class as 0 would give less still
    assert summary.mean_dice == pytest.approx(0.5)
    from medpipe.aggregate.semantic import class_summary

    per_class = class_summary(frame).set_index("class_id")
    assert per_class.loc[2, "mean_dice"] == pytest.approx(0.5) and per_class.loc[2, "n_rows"] == 1
    assert per_class.loc[1, "n_rows"] == 3


def test_paired_wilcoxon_pairs_by_case(tables):
    frame = load_results(tables)
    frame = frame.sample(frac=1.0, random_state=0)  # row order must not matter: pairing is by case id
    tests = paired_tests(frame)
    assert len(tests) == 1
    row = tests.iloc[0]
    assert (row.setting_a, row.setting_b) == ("SAM-UNETR sam, random decoder", "nnU-Net") or \
        (row.setting_b, row.setting_a) == ("SAM-UNETR sam, random decoder", "nnU-Net")
    assert row.n_cases == 6
    # case difference = (class-1 diff (0.2 + 0.01 s) + class-2 diff 0.2) / 2, averaged over seeds 0, 1 = 0.2025
    assert abs(row.mean_difference) == pytest.approx(0.2025, abs=1e-9)
    expected = stats.wilcoxon(np.full(6, 0.2025), np.zeros(6))
    assert row.p_value == pytest.approx(expected.pvalue)
    assert row.p_holm == pytest.approx(row.p_value)


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, np.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03)  # 3 tests: 3 x 0.01
    assert adjusted[3] == pytest.approx(0.06)  # 2 x 0.03
    assert adjusted[1] == pytest.approx(0.06)  # max(1 x 0.04, previous 0.06)
    assert np.isnan(adjusted[2])


def test_aggregate_writes_tables_and_figures(tables, tmp_path):
    aggregate(tables, ["d2"], [], tmp_path / "tables", tmp_path / "figures")
    for name in ("results", "class_summary", "seed_stats", "paired_tests"):
        assert (tmp_path / "tables" / f"{name}.tsv").stat().st_size > 0
    for name in ("fig1d_semantic2d", "fig1e_semantic3d", "fig8_semantic", "fig6_semantic_seeds"):
        data = (tmp_path / "figures" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    summary = pd.read_csv(tmp_path / "tables" / "class_summary.tsv", sep="\t")
    assert set(summary.columns) >= set(RESULT_COLUMNS) - {"seed", "case_id", "dice"}
    with pytest.raises(ValueError, match="nope.tsv: cannot read semantic result table"):
        load_results([tmp_path / "nope.tsv"])
