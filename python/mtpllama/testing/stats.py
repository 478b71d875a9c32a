"""Chi-square tests for the sampling tests (no SciPy needed)."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping


def chi2_sf(x: float, k: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty; accurate for k >= 10, within a
    factor of ~2 in the far tail for small k, which is enough for thresholds like 1e-3)."""
    if k <= 0:
        return 1.0
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_sample_chi2(a: Counter, b: Counter) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) for equal-size samples a and b; cells with fewer
    than 10 observations are pooled."""
    stat, cells, pool_a, pool_b = 0.0, 0, 0, 0
    for c in set(a) | set(b):
        x, y = a.get(c, 0), b.get(c, 0)
        if x + y < 10:
            pool_a += x
            pool_b += y
            continue
        stat += (x - y) ** 2 / (x + y)
        cells += 1
    if pool_a + pool_b > 0:
        stat += (pool_a - pool_b) ** 2 / (pool_a + pool_b)
        cells += 1
    return stat, cells - 1, chi2_sf(stat, cells - 1)


def goodness_of_fit(observed: Counter, probs: Mapping[int, float]) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of observed counts against probabilities; an
    observation outside probs' support gives p = 0."""
    n = sum(observed.values())
    if any(probs.get(c, 0.0) <= 0.0 for c in observed):
        return math.inf, 0, 0.0
    stat, cells = 0.0, 0
    for c, p in probs.items():
        if p > 0.0:
            e = n * p
            stat += (observed.get(c, 0) - e) ** 2 / e
            cells += 1
    return stat, cells - 1, chi2_sf(stat, cells - 1)
