"""Tolerances for the statistical tests of the random layers."""

import math

import numpy as np

# The chance that a statistical test fails although the layer samples from
# exactly the right distribution, over all the counts it checks at once.
FAMILY_WISE_ERROR = 1e-6


def count_tolerance(draws, probability, num_counts):
    """A bound `t` with P(|count - draws * probability| >= t) <=
    FAMILY_WISE_ERROR / num_counts, for a Binomial(draws, probability) count.

    Bernstein's inequality for a sum of independent variables within 1 of
    their mean, with total variance v = draws * p * (1 - p):
        P(|count - draws * p| >= t) <= 2 exp(-t**2 / (2 (v + t / 3))).
    Setting the right side to delta = FAMILY_WISE_ERROR / num_counts and
    L = log(2 / delta) gives t**2 - (2 L / 3) t - 2 L v = 0, whose positive
    root is returned. Unlike a normal approximation it holds for every
    `draws` and `probability`; with the union (Bonferroni) bound over the
    `num_counts` counts of a test, the test as a whole fails with
    probability at most FAMILY_WISE_ERROR when the layer is right.
    """
    log_term = math.log(2 * num_counts / FAMILY_WISE_ERROR)
    variance = draws * probability * (1 - probability)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * log_term * variance)


def assert_seeded_draws_reproducible(make_layer, x):
    """Checks the seeds of a random layer: `make_layer(seed)` builds it.

    The same seed gives the same draws, call after call; another seed, or
    the next call, gives others. The caller picks `x` with enough random
    units that identical draws would mean a broken generator, not chance.
    """

    def draws(seed):
        layer = make_layer(seed)
        return [np.asarray(layer(x, training=True)) for _ in range(2)]

    first, second = draws(7)
    np.testing.assert_array_equal(draws(7), [first, second])
    assert not np.array_equal(draws(8)[0], first)
    assert not np.array_equal(second, first)
