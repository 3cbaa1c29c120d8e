"""The statistics over seeds against hand-computed values, scipy.stats and
a Monte-Carlo simulation."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from kpool.harness import statistics

# Five seeds of a baseline and of three choices, as accuracy fractions.
BASELINE = [0.90, 0.91, 0.92, 0.93, 0.94]
# Differences from the baseline, seed by seed.
BETTER = [0.01, 0.02, 0.01, 0.02, 0.02]
MIXED = [-0.01, 0.00, -0.02, 0.01, -0.03]
WORSE = [-0.05, -0.06, -0.05, -0.06, -0.06]


def values_of(**choices):
    """The values table of {choice: {seed: value}}: a column per choice,
    a row per seed, NaN where a choice has no run."""
    return pd.DataFrame(choices)


def seeded(values, seeds=range(5)):
    return dict(zip(seeds, values, strict=True))


def shifted(differences):
    return seeded([b + d for b, d in zip(BASELINE, differences, strict=True)])


def test_mean_interval_by_hand():
    values = [0.90, 0.92, 0.94, 0.93]
    mean = (0.90 + 0.92 + 0.94 + 0.93) / 4
    variance = sum((v - mean) ** 2 for v in values) / 3
    half = scipy.stats.t.ppf(0.975, 3) * math.sqrt(variance / 4)
    # t(0.975, 3) from a printed table.
    np.testing.assert_allclose(scipy.stats.t.ppf(0.975, 3), 3.182446, 1e-6)
    got = statistics.mean_interval(values)
    np.testing.assert_allclose(got, (mean, mean - half, mean + half))
    np.testing.assert_allclose(
        got[1:], scipy.stats.t.interval(0.95, 3, mean, math.sqrt(variance / 4))
    )
    # NaNs are left out.
    np.testing.assert_allclose(
        statistics.mean_interval([*values, math.nan]), got
    )


def test_one_value_has_no_interval_and_none_has_no_mean():
    mean, low, high = statistics.mean_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in statistics.mean_interval([]))


@pytest.mark.parametrize("df", [1, 2, 4, 30])
def test_t_quantile_is_scipy_stats_t_ppf(df):
    for p in (0.025, 0.5, 0.975):
        np.testing.assert_allclose(
            statistics.t_quantile(p, df), scipy.stats.t.ppf(p, df)
        )


def test_paired_t_test_by_hand():
    # Differences 0.01 0.02 0.01 0.02 0.02: mean 0.016, squared deviations
    # (36 + 16 + 36 + 16 + 16) e-6 = 120e-6, sd = sqrt(30e-6).
    differences = pd.Series(BETTER)
    t = 0.016 / (math.sqrt(120e-6 / 4) / math.sqrt(5))
    p = 2 * scipy.stats.t.sf(t, 4)
    np.testing.assert_allclose(statistics.paired_t_test(differences), p)
    x = [b + d for b, d in zip(BASELINE, BETTER, strict=True)]
    np.testing.assert_allclose(p, scipy.stats.ttest_rel(x, BASELINE).pvalue)


def test_paired_t_test_matches_scipy_on_random_pairs():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x, y = rng.normal(size=(2, n))
        np.testing.assert_allclose(
            statistics.paired_t_test(pd.Series(x - y)),
            scipy.stats.ttest_rel(x, y).pvalue,
        )


def test_paired_t_test_without_spread_or_pairs_is_nan():
    assert math.isnan(statistics.paired_t_test(pd.Series([0.01, 0.01])))
    assert math.isnan(statistics.paired_t_test(pd.Series([0.01])))


def test_probability_of_improvement_counts_ties_half():
    # One win, one tie, three losses: (1 + 1/2) / 5.
    assert statistics.probability_of_improvement(MIXED) == 0.3
    # Lower is better: three wins, one tie, one loss.
    assert statistics.probability_of_improvement(MIXED, False) == 0.7
    assert math.isnan(statistics.probability_of_improvement([]))


@pytest.mark.parametrize(
    "p_values, adjusted",
    [
        # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04, then
        # running maxima 0.03, 0.06, 0.06.
        ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
        # A NaN is not tested: m = 2.
        ([0.02, math.nan, 0.01], [0.02, math.nan, 0.02]),
        # Capped at 1.
        ([0.6, 0.7], [1.0, 1.0]),
        ([0.2], [0.2]),
        ([], []),
    ],
)
def test_holm_by_hand(p_values, adjusted):
    np.testing.assert_allclose(statistics.holm(p_values), adjusted)


@pytest.mark.parametrize(
    "difference, p, higher_is_better, expected",
    [
        (0.01, 0.01, True, "better"),
        (-0.01, 0.01, True, "worse"),
        (-0.01, 0.01, False, "better"),
        (0.01, 0.05, True, "no evidence"),
        (0.01, math.nan, True, "no evidence"),
    ],
)
def test_verdict(difference, p, higher_is_better, expected):
    assert statistics.verdict(difference, p, higher_is_better) == expected


# Published sample sizes of the two-sided one-sample (paired) t-test at
# alpha 0.05 and 80% power, with their power (G*Power 3; Cohen 1988):
# (effect size d_z, n, power at n).
PUBLISHED = [(0.2, 199, 0.8017), (0.5, 34, 0.8078), (0.8, 15, 0.8213)]


@pytest.mark.parametrize("effect, n, power", PUBLISHED)
def test_seeds_to_detect_matches_published_sizes(effect, n, power):
    # In the units of a metric: a 0.2-point difference, sd 0.2 / d_z.
    assert statistics.seeds_to_detect(0.002, 0.002 / effect) == n
    np.testing.assert_allclose(
        statistics.paired_t_power(n, effect), power, atol=1e-4
    )
    assert statistics.paired_t_power(n - 1, effect) < 0.8


@pytest.mark.parametrize("effect", [0.7, 1.5])
def test_seeds_to_detect_by_monte_carlo(effect):
    """Simulated paired experiments at n and n - 1 seeds reject as often as
    the noncentral t says: at least 80% at n, less at n - 1."""
    n = statistics.seeds_to_detect(effect, 1.0)
    rng = np.random.default_rng(1)
    repeats = 20000
    # 4 standard errors of a proportion near 0.8.
    tolerance = 4 * math.sqrt(0.8 * 0.2 / repeats)
    for seeds in (n, n - 1):
        differences = rng.normal(effect, 1.0, size=(repeats, seeds))
        t = differences.mean(1) / (
            differences.std(1, ddof=1) / math.sqrt(seeds)
        )
        rejected = np.mean(np.abs(t) > scipy.stats.t.ppf(0.975, seeds - 1))
        critical = scipy.stats.t.ppf(0.975, seeds - 1)
        exact = scipy.stats.nct.sf(
            critical, seeds - 1, effect * math.sqrt(seeds)
        ) + scipy.stats.nct.cdf(-critical, seeds - 1, effect * math.sqrt(seeds))
        np.testing.assert_allclose(
            statistics.paired_t_power(seeds, effect), exact
        )
        assert abs(rejected - exact) < tolerance
        if seeds == n:
            assert exact >= 0.8
        else:
            assert exact < 0.8


def test_seeds_to_detect_without_spread_is_nan():
    assert math.isnan(statistics.seeds_to_detect(0.002, 0.0))
    assert math.isnan(statistics.seeds_to_detect(0.002, math.nan))
    assert statistics.seeds_to_detect(0.002, 1000.0) == math.inf


def test_compare_choices_by_hand():
    values = values_of(
        max=seeded(BASELINE),
        better=shifted(BETTER),
        mixed=shifted(MIXED),
        worse=shifted(WORSE),
    )
    table = statistics.compare_choices(values, "max", min_difference=0.002)
    assert list(table.index) == ["max", "better", "mixed", "worse"]
    assert table.loc["max", "verdict"] == "baseline"
    assert math.isnan(table.loc["max", "diff"])
    np.testing.assert_allclose(table.loc["max", "mean"], 0.92)
    assert (table["n_seeds"] == 5).all()
    assert (table.loc[["better", "mixed", "worse"], "n_pairs"] == 5).all()

    # The paired rows by hand: mean difference, sd, t interval, p-value.
    t_crit = scipy.stats.t.ppf(0.975, 4)
    p_values = {}
    for name, differences in [
        ("better", BETTER),
        ("mixed", MIXED),
        ("worse", WORSE),
    ]:
        mean = sum(differences) / 5
        sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 4)
        half = t_crit * sd / math.sqrt(5)
        row = table.loc[name]
        np.testing.assert_allclose(row["diff"], mean, atol=1e-12)
        np.testing.assert_allclose(row["paired_sd"], sd)
        np.testing.assert_allclose(
            [row["diff_ci95_low"], row["diff_ci95_high"]],
            [mean - half, mean + half],
            atol=1e-12,
        )
        p_values[name] = 2 * scipy.stats.t.sf(abs(mean) / (sd / 5**0.5), 4)
        np.testing.assert_allclose(row["p_paired_t"], p_values[name])
    # Holm over the three: smallest times 3, then 2, then 1, running max.
    ordered = sorted(p_values, key=p_values.get)
    running = 0.0
    for factor, name in zip((3, 2, 1), ordered, strict=True):
        running = max(running, min(1.0, factor * p_values[name]))
        np.testing.assert_allclose(table.loc[name, "p_holm"], running)
    assert table.loc["better", "verdict"] == "better"
    assert table.loc["worse", "verdict"] == "worse"
    assert table.loc["mixed", "verdict"] == "no evidence"
    assert table.loc["better", "prob_improvement"] == 1.0
    assert table.loc["mixed", "prob_improvement"] == 0.3
    assert table.loc["worse", "prob_improvement"] == 0.0
    # 0.2 points against the observed paired sd.
    assert table.loc["mixed", "seeds_to_detect"] == (
        statistics.seeds_to_detect(0.002, table.loc["mixed", "paired_sd"])
    )
    assert (table["note"] == "").all()


def test_compare_choices_lower_is_better():
    values = values_of(max=seeded(BASELINE), worse=shifted(WORSE))
    table = statistics.compare_choices(
        values,
        "max",
        min_difference=0.002,
        higher_is_better=False,
    )
    assert table.loc["worse", "verdict"] == "better"
    assert table.loc["worse", "prob_improvement"] == 1.0


def test_compare_choices_one_seed():
    values = values_of(max=seeded(BASELINE), single={0: 0.95})
    table = statistics.compare_choices(values, "max", min_difference=0.002)
    row = table.loc["single"]
    assert row["n_seeds"] == 1 and row["n_pairs"] == 1
    assert row["mean"] == 0.95
    for column in ("ci95_low", "diff", "diff_ci95_low", "p_paired_t"):
        assert math.isnan(row[column]), column
    assert pd.isna(row["verdict"])
    assert row["note"] == statistics.ONE_SEED_NOTE


def test_compare_choices_pairs_only_shared_seeds():
    # The choice has seeds 1, 2, 3 and 7; the baseline 0 to 4: three pairs.
    values = {1: 0.93, 2: 0.95, 3: 0.93, 7: 0.10}
    values = values_of(max=seeded(BASELINE), partial=values)
    table = statistics.compare_choices(values, "max", min_difference=0.002)
    row = table.loc["partial"]
    assert row["n_seeds"] == 4 and row["n_pairs"] == 3
    # Differences 0.02, 0.03, 0.00 (seed 7 has no partner).
    np.testing.assert_allclose(row["diff"], 0.05 / 3)
    np.testing.assert_allclose(
        row["p_paired_t"],
        scipy.stats.ttest_rel([0.93, 0.95, 0.93], BASELINE[1:4]).pvalue,
    )
    assert row["prob_improvement"] == 2.5 / 3
    assert row["note"] == "paired over the 3 seeds shared with max"
    # No shared seed at all.
    values = values_of(max={0: 0.9, 1: 0.91}, late={5: 0.9, 6: 0.9})
    table = statistics.compare_choices(values, "max", min_difference=0.002)
    assert table.loc["late", "n_pairs"] == 0
    assert table.loc["late", "note"] == "no seed shared with max"
    assert pd.isna(table.loc["late", "verdict"])


def test_compare_choices_without_baseline_runs():
    values = values_of(avg=seeded(BASELINE), better=shifted(BETTER))
    table = statistics.compare_choices(values, "max", min_difference=0.002)
    assert (table["note"] == "no runs of the baseline max").all()
    assert table["diff"].isna().all() and table["verdict"].isna().all()
    # The per-choice intervals are still there.
    assert table["ci95_low"].notna().all()


def test_compare_choices_identical_differences():
    # Every seed one test image (of 400) better: sd 0, no t-test, no seed
    # count, and the differences tie despite floating-point noise.
    values = values_of(max=seeded(BASELINE), same=shifted([1 / 400] * 5))
    row = statistics.compare_choices(values, "max", min_difference=0.002).loc[
        "same"
    ]
    assert row["paired_sd"] == 0
    assert math.isnan(row["p_paired_t"]) and math.isnan(row["seeds_to_detect"])
    assert row["verdict"] == "no evidence"
    assert row["note"] == "paired sd 0 over 5 seeds: no t-test, no seed count"
