"""Tolerances for the statistical tests of the random layers."""

import math

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
