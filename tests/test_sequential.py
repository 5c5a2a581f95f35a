"""The sequential rule's guarantee, by simulation: with no true gap, a study that adds seeds until its
comparison is decided names a wrong winner in at most α = 5% of studies, where repeated 95% intervals
(the naive rule) would not; and it does decide when there is a gap or clearly none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.sequential import ALPHA, Design, Verdict, read_at, ready_looks, replay, welch_interval

STUDIES = 4000
DESIGN = Design(first=3, most=9, step=2, practical_gap=1.0)  # looks at 3, 5, 7, 9 seeds per variant


def _simulate(rule, gap: float, sigma: tuple[float, float], seed: int) -> dict[Verdict, int]:
    """Verdict counts over STUDIES simulated studies: normal seeds, `gap` = true mean(first) − mean(second)."""
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(Verdict, 0)
    for _ in range(STUDIES):
        first = list(rng.normal(gap, sigma[0], DESIGN.most))
        second = list(rng.normal(0.0, sigma[1], DESIGN.most))
        counts[rule(first, second).verdict] += 1
    return counts


def _naive(first: list[float], second: list[float]):
    """Repeated 95% Welch intervals at every look, stopping at the first that excludes 0."""
    naive = Design(first=DESIGN.first, most=DESIGN.most, step=DESIGN.step, practical_gap=DESIGN.practical_gap)
    for look, n in enumerate(naive.looks):
        gap, low, high = welch_interval(np.array(first[:n]), np.array(second[:n]), ALPHA)
        verdict = Verdict.FIRST_BETTER if low > 0 else Verdict.SECOND_BETTER if high < 0 else Verdict.OPEN
        if verdict.decided:
            break
    return type("R", (), {"verdict": verdict})


def _wrong(counts: dict[Verdict, int]) -> float:
    return (counts[Verdict.FIRST_BETTER] + counts[Verdict.SECOND_BETTER]) / STUDIES


@pytest.mark.parametrize("sigma", [(2.0, 2.0), (1.0, 4.0)], ids=["equal-spread", "unequal-spread"])
def test_with_no_true_gap_a_wrong_winner_is_named_in_at_most_alpha_of_studies(sigma):
    sequential = _wrong(_simulate(lambda a, b: replay(a, b, DESIGN), 0.0, sigma, seed=1))
    naive = _wrong(_simulate(_naive, 0.0, sigma, seed=1))
    print(f"sigma={sigma}: wrong winner, sequential {sequential:.4f}, naive repeated 95% intervals {naive:.4f}")
    assert sequential <= ALPHA
    assert naive > ALPHA  # the naive rule fails the same test: the test can tell them apart


def test_the_spent_alpha_adds_up_to_alpha_and_grows_with_the_looks():
    spent = [DESIGN.alpha_at(k) for k in range(len(DESIGN.looks))]
    assert DESIGN.looks == [3, 5, 7, 9]
    assert sum(spent) == pytest.approx(ALPHA, abs=1e-15)
    assert spent == sorted(spent) and spent[0] == pytest.approx(ALPHA * (3 / 9) ** 2)
    assert Design.fixed(3).looks == [3] and Design.fixed(3).alpha_at(0) == pytest.approx(ALPHA)


def test_a_real_gap_is_decided_and_no_gap_with_little_noise_is_no_practical_difference():
    found = _simulate(lambda a, b: replay(a, b, DESIGN), 6.0, (2.0, 2.0), seed=2)
    assert found[Verdict.FIRST_BETTER] / STUDIES > 0.9 and found[Verdict.SECOND_BETTER] == 0
    same = _simulate(lambda a, b: replay(a, b, DESIGN), 0.0, (0.2, 0.2), seed=3)
    assert same[Verdict.NO_DIFFERENCE] / STUDIES > 0.9


def test_a_look_uses_only_its_seeds_and_waits_for_running_ones():
    first, second = [10.0, 11.0, 12.0, 50.0, 50.0], [1.0, 2.0, 3.0, 4.0, 5.0]
    reading = read_at(first, second, DESIGN, 0)
    assert (reading.n_first, reading.n_second, reading.gap) == (3, 3, 9.0)
    assert ready_looks([1.0, 2.0, None, 4.0, 5.0], second, DESIGN) == 0
    assert ready_looks(first, second, DESIGN) == 2
    assert replay([1.0, 2.0], second, DESIGN) is None
    failed = read_at([10.0, math.nan, 12.0], [1.0, 2.0, 3.0], DESIGN, 0)  # a seed without a result is left out
    assert (failed.n_first, failed.gap) == (2, 9.0)
    assert "remain possible" in read_at([1.0, 5.0, 3.0], [2.0, 4.0, 3.0], DESIGN, 0).still_possible()
