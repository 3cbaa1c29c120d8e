"""Statistics over seeds: intervals, paired comparisons, power.

Runs of one experiment share their seeds, and a seed fixes the data order,
the augmentation and the initial weights of the layers all choices share:
choice X and the baseline on seed s are a matched pair (Bouthillier et al.
2021, "Accounting for variance in machine learning benchmarks"). Per
choice this module gives the mean and its Student-t interval over seeds;
against a baseline, over the seeds both have:

- the mean paired difference X - baseline and its t interval;
- the two-sided paired t-test's p-value (as `scipy.stats.ttest_rel`),
  Holm-corrected across the choices compared with the same baseline;
- the probability of improvement: the fraction of pairs in which X beats
  the baseline, ties counting 1/2 (Agarwal et al. 2021's `rliable` counts
  the same over all n x m pairs of runs; here runs are matched, so over
  the pairs);
- a verdict from the corrected test: "better", "worse" or "no evidence";
- how many seeds would detect a given difference with 80% power at the
  observed paired standard deviation (two-sided paired t-test at 0.05,
  power from the noncentral t).

The t and noncentral t distributions come from `scipy.special` (`stdtr`,
`stdtrit`, `nctdtr`: the functions behind `scipy.stats.t` and
`scipy.stats.nct`). Importing `scipy.stats` takes about 0.6 s, which
`kpool report` would pay on every call; the tests check these against
`scipy.stats`.
"""

import math

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
ONE_SEED_NOTE = "1 seed: no interval"
# Differences are rounded to this many decimals: a CSV round trip and the
# subtraction leave ~1e-16 of noise, and two differences of the same number
# of test images must tie (and give a paired sd of exactly 0).
DECIMALS = 12
# `seeds_to_detect` gives up (returns inf) above this many seeds.
MAX_SEEDS = 10**9


def t_quantile(probability, df):
    """The `probability` quantile of Student's t with `df` degrees of
    freedom (`scipy.stats.t.ppf`)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, probability))


def _finite(values):
    values = np.asarray(values, dtype=float)
    return values[~np.isnan(values)]


def half_width(sd, n, confidence=CONFIDENCE):
    """The half-width of the Student-t `confidence` interval of a mean of
    `n` values with standard deviation `sd`: t(df=n-1) * sd / sqrt(n),
    elementwise; NaN where n < 2."""
    from scipy.special import stdtrit

    sd = np.asarray(sd, dtype=float)
    n = np.asarray(n, dtype=float)
    df = np.where(n >= 2, n - 1, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stdtrit(df, (1 + confidence) / 2) * sd / np.sqrt(n)


def mean_interval(values, confidence=CONFIDENCE):
    """`(mean, low, high)`: the mean of `values` (NaNs dropped) and its
    Student-t `confidence` interval, mean ± t(df=n-1) * sd / sqrt(n).

    With one value the interval is `(nan, nan)`; with none, all three are.
    """
    values = _finite(values)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(half_width(values.std(ddof=1), len(values), confidence))
    return mean, mean - half, mean + half


def paired_t_test(differences):
    """The two-sided p-value of the paired t-test of mean difference 0
    (`scipy.stats.ttest_rel`): t = mean / (sd / sqrt(n)), df = n - 1.

    NaN with fewer than two pairs, or when every pair differs by the same
    amount (sd 0: t is undefined, and the test's model of the
    differences as normal with a spread does not hold).
    """
    from scipy.special import stdtr

    differences = _finite(differences)
    n = len(differences)
    if n < 2:
        return math.nan
    sd = differences.std(ddof=1)
    if sd == 0:
        return math.nan
    t = differences.mean() / (sd / math.sqrt(n))
    return float(2 * stdtr(n - 1, -abs(t)))


def probability_of_improvement(differences, higher_is_better=True):
    """The fraction of pairs in which X beats the baseline, ties counting
    1/2; NaN without pairs."""
    differences = _finite(differences)
    if len(differences) == 0:
        return math.nan
    if not higher_is_better:
        differences = -differences
    return float(np.mean((differences > 0) + 0.5 * (differences == 0)))


def holm(p_values):
    """Holm's step-down adjusted p-values, in the order given.

    The i-th smallest of m p-values becomes max over j <= i of
    min(1, (m - j + 1) * p_(j)). NaNs stay NaN and do not count in m.
    """
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full(p_values.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p_values))
    order = valid[np.argsort(p_values[valid], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p_values[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def verdict(difference, p_adjusted, higher_is_better=True, alpha=ALPHA):
    """ "better" or "worse" when the corrected test rejects at `alpha`,
    else "no evidence" (also for a NaN p-value)."""
    if not p_adjusted < alpha:
        return "no evidence"
    return "better" if (difference > 0) == higher_is_better else "worse"


def paired_t_power(n, effect, alpha=ALPHA):
    """Power of the two-sided paired t-test at `alpha` with `n` pairs when
    the true mean difference is `effect` paired standard deviations.

    T follows a noncentral t with df = n - 1 and noncentrality
    effect * sqrt(n); power = P(|T| > t_(1 - alpha/2, n - 1)).
    """
    from scipy.special import nctdtr

    n = np.asarray(n, dtype=float)
    df = n - 1
    critical = t_quantile(1 - alpha / 2, df)
    noncentrality = effect * np.sqrt(n)
    return (
        1
        - nctdtr(df, noncentrality, critical)
        + nctdtr(df, noncentrality, -critical)
    )


def seeds_to_detect(difference, sd, alpha=ALPHA, power=POWER):
    """The smallest number of seeds n >= 2 whose paired t-test detects a
    true mean difference `difference` with at least `power`, when the
    paired differences have standard deviation `sd`.

    NaN when `sd` is 0 or NaN (nothing to size the test by: callers say
    so); inf beyond `MAX_SEEDS`.
    """
    if not sd > 0:
        return math.nan
    effect = abs(difference) / sd

    def enough(n):
        return paired_t_power(n, effect, alpha) >= power

    # Power grows with n: double until enough, then bisect.
    low, high = 1, 2
    while not enough(high):
        if high > MAX_SEEDS:
            return math.inf
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def compare_choices(values, baseline, *, min_difference, higher_is_better=True):
    """Per choice, its mean and interval over seeds, and its paired
    comparison with `baseline`, for one metric of one setting's runs.

    Args:
        values: DataFrame with a column per choice and a row per seed:
            the metric's value of that choice's run with that seed, NaN
            where there is none.
        baseline: str. The choice the others are paired with.
        min_difference: float. The difference, in the metric's units,
            whose detection `seeds_to_detect` sizes.
        higher_is_better: bool. Whether a larger value is an improvement
            (False for, e.g., an overfitting gap).

    Returns:
        A DataFrame indexed by choice, in the order of `values`' columns,
        with columns n_seeds, mean, ci95_low, ci95_high, n_pairs,
        paired_sd, diff, diff_ci95_low, diff_ci95_high, p_paired_t, p_holm,
        prob_improvement, verdict ("baseline" for the baseline; NaN when
        there are fewer than two pairs), seeds_to_detect and note (why
        numbers are missing; "" when none are).
    """
    columns = {c: values[c].to_numpy(dtype=float) for c in values}
    reference = columns.get(baseline)
    if reference is not None and np.isnan(reference).all():
        reference = None
    rows = {}
    for choice, x in columns.items():
        mean, low, high = mean_interval(x)
        n_seeds = int(np.count_nonzero(~np.isnan(x)))
        row = {
            "n_seeds": n_seeds,
            "mean": mean,
            "ci95_low": low,
            "ci95_high": high,
        }
        notes = [ONE_SEED_NOTE] if n_seeds == 1 else []
        if choice == baseline:
            row["verdict"] = "baseline"
        elif n_seeds == 0:
            pass  # The metric is absent: nothing to compare or to note.
        elif reference is None:
            notes.append(f"no runs of the baseline {baseline}")
        else:
            shared = ~np.isnan(x) & ~np.isnan(reference)
            differences = np.round(x[shared] - reference[shared], DECIMALS)
            row.update(_paired(differences, min_difference, higher_is_better))
            notes.extend(_pair_notes(row, n_seeds, baseline))
        row["note"] = "; ".join(notes)
        rows[choice] = row
    compared = [c for c, row in rows.items() if row.get("verdict") is None]
    adjusted = holm([rows[c].get("p_paired_t", math.nan) for c in compared])
    for choice, p in zip(compared, adjusted, strict=True):
        rows[choice]["p_holm"] = p
        if rows[choice].get("n_pairs", 0) >= 2:
            rows[choice]["verdict"] = verdict(
                rows[choice]["diff"], p, higher_is_better
            )
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.reindex(columns=COMPARISON_COLUMNS)
    for column in ("n_seeds", "n_pairs"):
        table[column] = table[column].astype("Int64")
    return table


COMPARISON_COLUMNS = (
    "n_seeds",
    "mean",
    "ci95_low",
    "ci95_high",
    "n_pairs",
    "paired_sd",
    "diff",
    "diff_ci95_low",
    "diff_ci95_high",
    "p_paired_t",
    "p_holm",
    "prob_improvement",
    "verdict",
    "seeds_to_detect",
    "note",
)


def _paired(differences, min_difference, higher_is_better):
    n = len(differences)
    enough = n >= 2
    mean, low, high = mean_interval(differences)
    sd = float(differences.std(ddof=1)) if enough else math.nan
    return {
        "n_pairs": n,
        "paired_sd": sd,
        "diff": mean if enough else math.nan,
        "diff_ci95_low": low,
        "diff_ci95_high": high,
        "p_paired_t": paired_t_test(differences),
        "prob_improvement": (
            probability_of_improvement(differences, higher_is_better)
            if enough
            else math.nan
        ),
        "seeds_to_detect": seeds_to_detect(min_difference, sd),
    }


def _pair_notes(row, n_seeds, baseline):
    n = row["n_pairs"]
    if n == 0:
        return [f"no seed shared with {baseline}"]
    if n == 1:
        # One seed of its own says that already.
        if n_seeds == 1:
            return []
        return [f"1 seed shared with {baseline}: no paired test"]
    notes = []
    if n < n_seeds:
        notes.append(f"paired over the {n} seeds shared with {baseline}")
    if row["paired_sd"] == 0:
        notes.append(f"paired sd 0 over {n} seeds: no t-test, no seed count")
    return notes
