"""deployq.stats against scipy's reference implementations (intervals, McNemar's exact
test), with negative controls, and the per-sample mask encoding."""
import random

import pytest

from deployq import stats

scipy_stats = pytest.importorskip("scipy.stats")

CASES = [(0, 10), (1, 10), (5, 10), (10, 10), (57, 200), (171, 200), (200, 200), (3, 359)]


@pytest.mark.parametrize("k, n", CASES)
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    lo, hi = stats.clopper_pearson(k, n)
    ref_lo = 0.0 if k == 0 else scipy_stats.beta.ppf(0.025, k, n - k + 1)
    ref_hi = 1.0 if k == n else scipy_stats.beta.ppf(0.975, k + 1, n - k)
    assert lo == pytest.approx(ref_lo, abs=1e-9) and hi == pytest.approx(ref_hi, abs=1e-9)


@pytest.mark.parametrize("k, n", CASES)
def test_wilson_matches_scipy_and_holds_the_estimate(k, n):
    lo, hi = stats.wilson(k, n)
    res = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert lo == pytest.approx(res.low, abs=1e-9) and hi == pytest.approx(res.high, abs=1e-9)
    assert lo <= k / n <= hi and (k < n or hi == 1.0) and (k > 0 or lo == 0.0)


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 12), (10, 10), (1, 30), (40, 25)])
def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs(b, c):
    ref = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert stats.mcnemar(b, c) == pytest.approx(ref, rel=1e-9)


def test_paired_counts_discordant_samples_and_decides():
    same = [True] * 50 + [False] * 50
    assert stats.paired(same, same) == {"first_only": 0, "second_only": 0, "p": 1.0,
                                        "significant": False}
    better = [True] * 70 + [False] * 30
    test = stats.paired(better, same)
    assert test["first_only"] == 20 and test["second_only"] == 0 and test["significant"]
    # negative control: 5 vs 3 discordant samples is not a significant difference
    slightly = [True] * 55 + [False] * 45
    slightly[:3] = [False] * 3
    assert not stats.paired(slightly, same)["significant"]
    with pytest.raises(ValueError):
        stats.paired(same, same[:-1])


def test_masks_round_trip_any_length():
    rng = random.Random(0)
    for n in (0, 1, 3, 4, 5, 200, 359):
        mask = [rng.random() < 0.5 for _ in range(n)]
        assert stats.unpack(stats.pack(mask), n) == mask
    assert stats.pack([True, False, False, False, True]) == "88"
    with pytest.raises(ValueError):
        stats.unpack("zz", 4)
    with pytest.raises(ValueError):
        stats.unpack("f", 5)


def test_bad_counts_are_refused():
    for k, n in ((-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            stats.wilson(k, n)
    with pytest.raises(ValueError):
        stats.mcnemar(-1, 2)
