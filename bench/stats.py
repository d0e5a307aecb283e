"""The statistics behind the leaderboard: standard errors over seeds, bootstrap intervals over test
queries, and the paired comparison of two entries on the same queries. Pure functions (numpy).

Every entry of a sweep evaluates the same first N queries of each test split with the same
evaluation seed, so a query is one unit of the test set: an interval resamples queries (each
query's value averaged over the entry's seeds), and two entries are compared query by query.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

RESAMPLES = 10_000  # bootstrap resamples of every interval
SEED = 0  # every interval draws from its own generator with this seed: reproducible in any order
LEVEL = 0.95


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean = sample std / sqrt(n)); the error is None for one value,
    both are None for none."""
    if not values:
        return None, None
    if len(values) == 1:
        return float(values[0]), None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def bootstrap_interval(values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one per query): `resamples` draws of
    len(values) values with replacement, the (1 - level) / 2 and (1 + level) / 2 quantiles of their
    means (numpy's linear interpolation). None for no values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return None
    draws = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    means = x[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, with each untied query equally likely to go
    either way, of a split at least as uneven as `wins` : `losses` (ties are left out; no untied
    query: 1). With 0/1 values per query this is the exact McNemar test."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def per_query(seeds: Sequence[Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """query -> its value averaged over the seeds that evaluated it (one mapping per seed)."""
    values: dict[Hashable, list[float]] = {}
    for seed in seeds:
        for query, value in seed.items():
            values.setdefault(query, []).append(float(value))
    return {query: statistics.fmean(v) for query, v in values.items()}


@dataclass(frozen=True)
class Paired:
    """Entry a against entry b on the queries both evaluated."""

    queries: int
    mean_a: float
    mean_b: float
    difference: float  # mean_a - mean_b
    interval: tuple[float, float]  # paired bootstrap interval of the difference
    wins: int  # queries where a's value is higher
    ties: int
    losses: int
    p_value: float  # exact two-sided sign test on wins : losses


def paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, resamples: int = RESAMPLES,
           seed: int = SEED) -> Paired | None:
    """Compare per-query values (see `per_query`) over the queries both have; None when they share none.
    `wins` counts queries where a is higher whatever the metric's direction."""
    shared = [q for q in a if q in b]
    if not shared:
        return None
    x = np.array([a[q] for q in shared], dtype=np.float64)
    y = np.array([b[q] for q in shared], dtype=np.float64)
    d = x - y
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return Paired(queries=len(shared), mean_a=float(x.mean()), mean_b=float(y.mean()), difference=float(d.mean()),
                  interval=bootstrap_interval(d, resamples=resamples, seed=seed), wins=wins,
                  ties=len(shared) - wins - losses, losses=losses, p_value=sign_test(wins, losses))
