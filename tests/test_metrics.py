"""Dice, IoU, NoC and the bootstrap CI on hand-computed cases."""

import numpy as np
import pytest

from medpipe import metrics


def test_dice_and_iou_on_known_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True  # 4 px
    b[0, 2:4] = True  # 2 px, overlap 2
    b[1, 0:2] = True  # +2 px elsewhere
    assert metrics.dice(a, b) == pytest.approx(2 * 2 / 8)
    assert metrics.iou(a, b) == pytest.approx(2 / 6)
    assert metrics.dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.dice(a, b[:2])


def test_noc_counts_interactions_until_threshold():
    # interaction 1 = first prompt; reaches 0.85 at the third interaction, 0.9 at the fourth
    dices = [0.5, 0.8, 0.86, 0.93, 0.95]
    assert metrics.noc(dices, 0.85) == 3
    assert metrics.noc(dices, 0.90) == 4
    assert metrics.noc([0.91], 0.9) == 1
    # never reached -> the cap (default: number of interactions available)
    assert metrics.noc([0.1, 0.2, 0.3], 0.9) == 3
    assert metrics.noc([0.1, 0.2, 0.3], 0.9, cap=20) == 20
    with pytest.raises(ValueError):
        metrics.noc([], 0.9)


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    est, low, high = metrics.bootstrap_ci(values, n_boot=2000, rng=np.random.default_rng(1))
    assert est == pytest.approx(0.6)
    assert low < est < high
    assert low >= 0.2 and high <= 1.0
    assert (low, high) == metrics.bootstrap_ci(values, n_boot=2000, rng=np.random.default_rng(1))[1:]
    # a wider spread gives a wider interval
    _, low2, high2 = metrics.bootstrap_ci(values * 2, n_boot=2000, rng=np.random.default_rng(1))
    assert high2 - low2 == pytest.approx(2 * (high - low))
    assert metrics.bootstrap_ci([0.7], n_boot=50) == (0.7, 0.7, 0.7)
