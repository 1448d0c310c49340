"""Bootstrap intervals shared by the real-model benchmarks (jury_injection, memory_poisoning)."""

from __future__ import annotations

import random
import statistics


def bootstrap_ci(xs: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean of ``xs`` (resampling trials), rounded to 3 places."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(xs, k=len(xs))) for _ in range(n))
    return [round(means[int(0.025 * n)], 3), round(means[int(0.975 * n) - 1], 3)]
