"""Accuracy confidence intervals and the two trivial baselines (chance, majority)."""
import math
from collections import Counter

from data.choices import record_choices


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials (z=1.96: 95%).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k=0 and k=n.
    n=0 carries no information and gives (0.0, 1.0).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def chance_accuracy(task: str, records: list[dict]) -> float:
    """Expected accuracy of uniform random guessing: mean over records of 1 / (#choices offered).

    The number of choices is parsed from each record's "Answer format:" line (ARC questions
    offer 3, 4 or 5), falling back to the task vocabulary size.
    """
    if not records:
        raise ValueError("chance_accuracy needs at least one record")
    return sum(1.0 / len(record_choices(r, task)) for r in records) / len(records)


def majority_accuracy(records: list[dict]) -> float:
    """Accuracy of always answering the most frequent gold answer of these records.

    Computed on the evaluated records themselves, so it is an (optimistic) oracle baseline: a
    model below it has learned less than the label distribution.
    """
    if not records:
        raise ValueError("majority_accuracy needs at least one record")
    counts = Counter(r["answer"] for r in records)
    return counts.most_common(1)[0][1] / len(records)
