"""A − B with the SEEDS as the sample: Welch's t-test on the per-seed accuracies of two seed groups.

analysis/paired.py compares two rows over the test examples, seeds held fixed: its interval says the two
sets of checkpoints differ on these questions, not that another seed would repeat the gap. This is the
other half (analyze_results.py --compare prints both when both rows have ≥ 2 seeds):

    x_1..x_m, y_1..y_k = the per-seed accuracies of A and B on one task
    Δ = mean(x) − mean(y),  se² = s_x²/m + s_y²/k            (sample variances, n−1 denominators)
    ν = se⁴ / ((s_x²/m)² / (m−1) + (s_y²/k)² / (k−1))       (Welch–Satterthwaite degrees of freedom)
    95% interval Δ ± t_{0.975, ν} · se;  p = 2·(1 − F_ν(|Δ| / se)) = I_{ν/(ν+t²)}(ν/2, ½), t = Δ/se   (two-sided)

F_ν, the Student t distribution function, from the regularised incomplete beta function:
F_ν(t) = 1 − ½·I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0 (Abramowitz & Stegun 26.7.1), I by its continued fraction
(modified Lentz; Numerical Recipes 6.4), t_{q, ν} by bisection on F_ν. Standard-library floats only;
tests/test_welch.py checks them against scipy.stats. With 3 seeds a side ν is about 2–4 and t_{0.975, ν}
is 2.8–4.3: the interval is wide, as three seeds are. When neither group varies between its seeds (se = 0)
there is no interval: None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf), modified Lentz, to 1e-15."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 ≤ x ≤ 1, a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with df > 0 degrees of freedom (df need not be an integer)."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """t with P(T ≤ t) = q (0 < q < 1), by bisection on t_cdf to 1e-12 relative."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: q must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < q:
        high *= 2.0
    while high - low > 1e-12 * max(1.0, high):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < q else (low, mid)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class SeedDiff:
    """A − B over seeds on one task (accuracies as fractions)."""
    delta: float  # mean(x) − mean(y)
    low: float  # LEVEL interval, Welch
    high: float
    p: float  # two-sided
    df: float  # Welch–Satterthwaite ν
    seeds_a: int
    seeds_b: int


def welch_difference(x: list[float], y: list[float], level: float = LEVEL) -> SeedDiff | None:
    """Welch's t-test of mean(x) − mean(y) (the module docstring); None when a side has fewer than
    2 values or neither side varies."""
    m, k = len(x), len(y)
    if m < 2 or k < 2:
        return None
    mx, my = math.fsum(x) / m, math.fsum(y) / k
    vx = math.fsum((v - mx) ** 2 for v in x) / (m - 1) / m  # s_x² / m
    vy = math.fsum((v - my) ** 2 for v in y) / (k - 1) / k
    se2 = vx + vy
    if se2 <= 0.0:
        return None
    df = se2 * se2 / (vx * vx / (m - 1) + vy * vy / (k - 1))
    se, delta = math.sqrt(se2), mx - my
    half = t_quantile(0.5 + level / 2.0, df) * se
    t = delta / se
    p = min(1.0, incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))  # 2·P(T > |t|), no cancellation
    return SeedDiff(delta=delta, low=delta - half, high=delta + half, p=p, df=df, seeds_a=m, seeds_b=k)
