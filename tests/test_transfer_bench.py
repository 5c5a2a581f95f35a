"""The transfer bench's measures: trial-epochs to a goal (censored at what a search ran) and the ratio's interval."""

from __future__ import annotations

import numpy as np

from study.transfer_bench import Search, ratio_interval


def test_trial_epochs_to_a_goal_count_until_the_best_so_far_reaches_it_else_all_that_ran():
    search = Search("transfer-unseeded", "s", 1, 10.0, [12.0, 30.0, 20.0, 45.0, 41.0])
    assert search.final_best == 45.0
    assert search.epochs_to(30.0) == (2, True) and search.epochs_to(40.0) == (4, True)
    assert search.epochs_to(45.5) == (5, False)


def test_the_ratio_is_of_means_and_its_interval_spans_the_resampled_rounds():
    assert ratio_interval([9, 9, 9], [18, 18, 18], np.random.default_rng(0)) == (0.5, 0.5, 0.5)
    ratio, low, high = ratio_interval([9, 10, 9, 9], [11, 38, 30, 9], np.random.default_rng(0), paired=True)
    assert ratio == 37 / 88 and low < ratio < high and low >= 37 / 88 * 0.5 and high <= 1.0
