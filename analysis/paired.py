"""Paired comparisons of evaluation runs on the same test examples, and seed aggregation
(used by analyze_results.py: --baseline, --compare and the multi-seed rows).

Design (what analyze_results.py does with these functions)

* Pairing is by example id: eval/<task>.jsonl holds one line per evaluated example
  {"id": index in the task's test file, "gold", "correct", ...}. Two runs are compared on a task
  only when they evaluated exactly the same ids with the same gold answers; otherwise the command
  refuses (one line, exit status 2) instead of comparing different questions. The predictions file
  must agree with results.json (as many lines as its "n", as many correct ones as its "correct").

* Labels: a run's label is its folder name (a name shared by two folders gets its parent folder in
  front: "a/run", "b/run"). A seed group's label is the members' common folder name once the seed
  token ("s42", "seed42", "seed-42", "seed=42" between "_"/"-" separators or at an end) and the
  default run-name timestamp ("_20250101-120000-1234") are removed, e.g. knowhira_M_lr0.001_s1_<time>
  and knowhira_M_lr0.001_s2_<time> -> "knowhira_M_lr0.001"; when those differ, the label is
  method_model_key=value_... of the shown hyperparameters. A label still taken by another row gets
  "#2", "#3". --baseline/--compare accept a run folder (or its results.json) or a label; a folder that
  belongs to a seed group selects the group's row.

* Seed groups: runs whose results.json "meta" blocks are equal except "seed" and "adapter" (best/ or
  final/), whose tasks were evaluated with the same mode/max_new_tokens/beam_size, that have distinct
  seeds, and that evaluated the same example ids (and gold answers) on every task, form one row.
  Runs without a seed in their meta (zero-shot) or without predictions files are never grouped;
  candidates that fail the checks stay separate rows and a note on stderr says why.
  A group's task value is the mean over seeds of the per-seed accuracies and the SAMPLE standard
  deviation over seeds (n−1 denominator; the CSV carries every seed's accuracy). Its interval
  (bars in the chart, ci95 columns of the CSV) is over examples: the seed-averaged per-example
  correctness a_i has mean m = the mean accuracy and the 95% interval is m ± 1.96·sd(a)/√n
  (sample sd, clipped to [0, 1]); it treats the examples as the sample and the seeds as fixed, the
  spread between seeds is the separate std.

* Paired difference of row A against row B on one task (single runs are one-seed groups):
  a_i, b_i = mean correctness of example i over A's and B's seeds (0/1 for one seed),
  d_i = a_i − b_i, Δ = mean d_i = acc(A) − acc(B).
  95% interval: the Agresti–Min ("Wald+2", Agresti & Min 2005, Stat Med 24:729) adjusted interval,
  i.e. the Wald interval after adding 0.5 to each cell of the paired 2x2 table. Written on the
  d_i it is the Wald interval of the sample augmented with two pseudo-examples (weight ½ at d=+1,
  ½ at d=−1, 1 at d=0):
      n* = n + 2,  m* = Σd_i / n*,  v* = (Σd_i² + 1) / n* − m*²,  m* ± 1.96·√(v* / n*), clipped to [−1, 1]
  for 0/1 correctness that is exactly (n10−n01)/(n+2) ± 1.96·√((n10+n01+1) − (n10−n01)²/(n+2))/(n+2).
  Why not the plain Δ ± 1.96·sd(d)/√n: with few discordant pairs it under-covers, and with none it
  is the empty [0, 0]; the adjustment fixes both at no cost for large n (at n = 1000 with 100
  discordant pairs the endpoints move by 0.01 percentage point). For seed-averaged d_i the same
  pseudo-example formula is used: our extension of the adjustment (a Wald interval over examples
  with a small shrinkage), not a published interval. The midpoint m* is Δ shrunk by n/(n+2); Δ
  itself is reported unshrunk.
  p-value (two-sided), by what the d_i are:
    - both rows single-seed (d_i ∈ {−1, 0, 1}): exact McNemar, the binomial test on the
      discordant pairs n10 (A right, B wrong) and n01: p = min(1, 2·Σ_{k ≤ min(n10,n01)} C(n,k) / 2^n),
      n = n10 + n01, p = 1 when n = 0 (integer arithmetic, no approximation);
    - otherwise the exact sign-flip permutation test of H0 "d_i symmetric about 0":
      p = P(|Σ ε_i d_i| ≥ |Σ d_i|) over all 2^m sign vectors of the m non-zero d_i. The d_i are
      multiples of 1/L (L = lcm of the two seed counts), so the distribution of Σ ε_i·(L·d_i) is
      computed exactly as a convolution of binomials over integers (sign_flip_p; for 0/1 d_i it is
      the McNemar p above; well under a second for 10,000 examples and 3 vs 3 seeds). Only when
      that convolution would exceed EXACT_LIMIT element operations (e.g. 5 vs 12 seeds on 10,000
      examples) a Monte Carlo sign-flip with MC_DRAWS = 100,000 draws from numpy's
      default_rng(MC_SEED = 0) is used instead, p = (1 + #{|S*| ≥ |S|}) / (1 + draws) (so never
      below 1e-5), and the output says "MC".
  The test treats the examples as the random sample (as the Wilson intervals do) and the seeds as
  fixed; with equal seed counts on both sides and exchangeable runs, d_i is symmetric under H0,
  with unequal counts (e.g. 3 seeds vs a 1-seed baseline) the symmetry is an approximation.

* Several tasks: the average Δ over tasks is the mean of the per-task Δ with the interval
  mean ± 1.96·√(Σ se_t²)/T (the tasks are independent samples; se_t as above); no p-value.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utils.errors import BadInput

Z95 = 1.96  # the z of every 95% interval here (as eval.metrics.wilson_interval uses)
MC_DRAWS = 100_000
MC_SEED = 0
EXACT_LIMIT = 2 * 10 ** 9  # bound on the exact sign-flip's element operations (~1 s); beyond: Monte Carlo


class PairingError(BadInput):
    """Runs that cannot be paired (different examples, missing or inconsistent predictions)."""


# ------------------------------------------------------------------------------ predictions

@dataclass(frozen=True)
class Predictions:
    """One run's per-example correctness on one task, keyed by example id."""
    correct: dict  # id -> bool
    gold: dict  # id -> gold answer (None where the file has none)

    @property
    def ids(self) -> frozenset:
        return frozenset(self.correct)


def load_predictions(run_dir, task: str, result: dict | None = None, suffix: str = "") -> Predictions:
    """eval/<task>.jsonl of a run (or result["predictions_file"] relative to run_dir), checked
    against its results.json entry `result` (n, correct) when given; PairingError when unusable.
    suffix "_norm": the rows' correct_norm (acc_norm) instead of correct."""
    rel = (result or {}).get("predictions_file") or f"eval/{task}.jsonl"
    path = Path(run_dir) / rel
    if not path.is_file():
        raise PairingError(f"{path}: no predictions file (paired tests and seed groups need eval/<task>.jsonl)")
    correct, gold = {}, {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PairingError(f"{path}: cannot read ({err})") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = row["id"]
            value = row["correct" + suffix]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PairingError(f"{path}:{number}: expected a JSON object with 'id' and 'correct{suffix}' "
                               f"({err})") from err
        if isinstance(example, bool) or not isinstance(example, int) or value not in (True, False, 0, 1):
            raise PairingError(f"{path}:{number}: 'id' must be an integer and 'correct{suffix}' a boolean")
        if example in correct:
            raise PairingError(f"{path}:{number}: example id {example} appears twice")
        correct[example] = bool(value)
        gold[example] = row.get("gold")
    if result is not None:
        n, n_correct = result.get("n"), result.get("correct" + suffix)
        if n is not None and int(n) != len(correct):
            raise PairingError(f"{path}: {len(correct)} examples, but results.json says n={n} (stale predictions?)")
        if n_correct is not None and int(n_correct) != sum(correct.values()):
            raise PairingError(f"{path}: {sum(correct.values())} correct{suffix}, but results.json says "
                               f"correct{suffix}={n_correct} (stale predictions?)")
    return Predictions(correct, gold)


def same_examples_problem(task: str, name_a: str, a: Predictions, name_b: str, b: Predictions) -> str | None:
    """None when a and b evaluated the same example ids with the same gold answers, else a
    one-line description of the difference."""
    if a.ids != b.ids:
        return (f"{task}: {name_a} and {name_b} did not evaluate the same examples ({len(a.ids)} vs "
                f"{len(b.ids)} ids; {len(a.ids - b.ids)} only in {name_a}, {len(b.ids - a.ids)} only in "
                f"{name_b}); evaluate both with the same --max_examples and --seed")
    differ = sum(1 for i in a.ids if a.gold[i] is not None and b.gold[i] is not None and a.gold[i] != b.gold[i])
    if differ:
        return (f"{task}: {name_a} and {name_b} have different gold answers for {differ} of the same "
                f"example ids (different test files?)")
    return None


# ------------------------------------------------------------------------------- statistics

def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and SAMPLE standard deviation (n−1 denominator; None for a single value)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_interval(values: list[float], z: float = Z95, low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    """mean ± z·sd/√n (sample sd), clipped to [low, high]: the interval over examples of a seed
    group's accuracy (values = the seed-averaged correctness of each example)."""
    mean, sd = mean_std(values)
    half = 0.0 if sd is None else z * sd / math.sqrt(len(values))
    return max(low, mean - half), min(high, mean + half)


def mcnemar_exact_p(n01: int, n10: int) -> float:
    """Two-sided exact McNemar p-value: the binomial(n01 + n10, ½) test of the discordant pairs,
    min(1, 2·P(X ≤ min(n01, n10))); 1 when there is no discordant pair. Exact integer sums."""
    if n01 < 0 or n10 < 0:
        raise ValueError(f"discordant counts must be >= 0, got {n01}, {n10}")
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(n01, n10) + 1))
    return min(1.0, (2 * tail) / (1 << n))  # int / int: correctly rounded even for huge n


def agresti_min_interval(diffs: list[float], z: float = Z95) -> tuple[float, float, float]:
    """(low, high, se) of the paired difference mean(diffs): Agresti–Min's adjusted Wald interval,
    written for any d_i in [−1, 1] (see the module docstring)."""
    n_star = len(diffs) + 2
    total = math.fsum(diffs)
    mid = total / n_star
    var = (math.fsum(d * d for d in diffs) + 1.0) / n_star - mid * mid
    se = math.sqrt(max(var, 0.0) / n_star)
    return max(-1.0, mid - z * se), min(1.0, mid + z * se), se


def _binomial_pmf(c: int):
    """P(K = j), K ~ Binomial(c, ½), j = 0..c: exact integers C(c, j) / 2^c, rounded once."""
    import numpy as np

    denom, comb, out = 1 << c, 1, []
    for j in range(c + 1):
        out.append(comb / denom)
        comb = comb * (c - j) // (j + 1)
    return np.array(out)


def sign_flip_p(weights: list[int], *, draws: int = MC_DRAWS, seed: int = MC_SEED,
                exact_limit: int = EXACT_LIMIT) -> tuple[float, str]:
    """Two-sided sign-flip permutation p-value for integer differences `weights` (zeros ignored):
    P(|Σ ε_i w_i| ≥ |Σ w_i|) with ε_i = ±1 independent and fair. Returns (p, method): "exact
    sign-flip" or "MC sign-flip (N draws)".

    Exact: the m non-zero |w_i| take few distinct values v (at most L); the v's with count c add
    v·(2K − c), K ~ Binomial(c, ½), so the distribution of the sum is the convolution of these
    binomials on the integer lattice [−Σ|w_i|, Σ|w_i|]; when the bound on its element operations
    (Σ over values of (c + 1) · the lattice reached before) exceeds exact_limit: Monte Carlo."""
    import numpy as np

    magnitudes = Counter(abs(int(x)) for x in weights if x)
    observed = abs(sum(int(x) for x in weights))
    m = sum(magnitudes.values())
    if m == 0:
        return 1.0, "exact sign-flip"
    total = sum(v * c for v, c in magnitudes.items())
    groups = sorted(magnitudes.items(), key=lambda item: -item[1])
    work, reach = 0, 0  # an upper bound of the element operations of the exact convolution below
    for v, c in groups:
        work, reach = work + (c + 1) * (2 * reach + 1), reach + v * c
    if work <= exact_limit:
        dist = np.zeros(2 * total + 1)  # dist[j] = P(S = j − total)
        dist[total] = 1.0
        lo = hi = total  # where dist can be non-zero
        for v, c in groups:
            pmf = _binomial_pmf(c)
            new, seg = np.zeros_like(dist), dist[lo:hi + 1]
            for j in np.flatnonzero(pmf):  # atoms that underflowed to 0 change nothing
                shift = v * (2 * int(j) - c)
                new[lo + shift:hi + 1 + shift] += pmf[j] * seg
            dist = new
            nonzero = np.flatnonzero(dist)
            lo, hi = int(nonzero[0]), int(nonzero[-1])
        sums = np.arange(-total, total + 1)
        return min(1.0, float(dist[np.abs(sums) >= observed].sum())), "exact sign-flip"
    w = np.array([v for v, c in magnitudes.items() for _ in range(c)], dtype=np.int64)
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, min(draws, 2 ** 22 // m))
    while done < draws:
        k = min(chunk, draws - done)
        signs = rng.integers(0, 2, size=(k, m), dtype=np.int8).astype(np.int64) * 2 - 1
        hits += int((np.abs(signs @ w) >= observed).sum())
        done += k
    return (1 + hits) / (1 + draws), f"MC sign-flip ({draws} draws)"


@dataclass(frozen=True)
class PairedDiff:
    """A − B on one task, paired by example (see the module docstring for every formula)."""
    n: int  # paired examples
    acc_a: float
    acc_b: float
    delta: float  # acc_a − acc_b = mean d_i
    low: float  # 95% Agresti–Min interval
    high: float
    se: float
    p: float  # two-sided
    p_test: str  # "exact McNemar", "exact sign-flip" or "MC sign-flip (N draws)"
    a_better: int  # examples with d_i > 0 (n10 for single seeds)
    b_better: int  # examples with d_i < 0 (n01)
    seeds_a: int
    seeds_b: int


def paired_difference(a: list[Predictions], b: list[Predictions], *, z: float = Z95,
                      draws: int = MC_DRAWS, seed: int = MC_SEED, exact_limit: int = EXACT_LIMIT) -> PairedDiff:
    """Paired difference of row A (one Predictions per seed) against row B on one task. Every
    Predictions must cover the same ids (PairingError otherwise: the caller names the runs)."""
    if not a or not b:
        raise ValueError("paired_difference needs at least one run on each side")
    ids = a[0].ids
    if any(p.ids != ids for p in (*a, *b)):
        raise PairingError("the runs did not evaluate the same examples")
    if not ids:
        raise PairingError("no examples to pair")
    ka, kb = len(a), len(b)
    scale = math.lcm(ka, kb)  # d_i · scale is an integer
    order = sorted(ids)
    ints = [sum(p.correct[i] for p in a) * (scale // ka) - sum(p.correct[i] for p in b) * (scale // kb)
            for i in order]
    n = len(order)
    diffs = [x / scale for x in ints]
    acc_a = math.fsum(sum(p.correct.values()) / n for p in a) / ka
    acc_b = math.fsum(sum(p.correct.values()) / n for p in b) / kb
    low, high, se = agresti_min_interval(diffs, z)
    a_better, b_better = sum(x > 0 for x in ints), sum(x < 0 for x in ints)
    if scale == 1:
        p, method = mcnemar_exact_p(b_better, a_better), "exact McNemar"
    else:
        p, method = sign_flip_p(ints, draws=draws, seed=seed, exact_limit=exact_limit)
    return PairedDiff(n=n, acc_a=acc_a, acc_b=acc_b, delta=math.fsum(diffs) / n, low=low, high=high, se=se,
                      p=p, p_test=method, a_better=a_better, b_better=b_better, seeds_a=ka, seeds_b=kb)


def average_difference(diffs: list[PairedDiff], z: float = Z95) -> tuple[float, float, float]:
    """(mean Δ, low, high) over tasks: mean ± z·√(Σ se²)/T (independent tasks)."""
    if not diffs:
        raise ValueError("average_difference needs at least one task")
    t = len(diffs)
    mean = math.fsum(d.delta for d in diffs) / t
    half = z * math.sqrt(math.fsum(d.se ** 2 for d in diffs)) / t
    return mean, max(-1.0, mean - half), min(1.0, mean + half)


# ------------------------------------------------------------------------- seed groups, labels

GROUP_IGNORED_META = ("seed", "adapter")
TASK_SETTINGS = ("mode", "max_new_tokens", "beam_size")
_TIMESTAMP = re.compile(r"[_-]\d{8}-\d{6}(?:-\d+)?$")  # training/recipe.py default_run_name


def group_key(meta: dict, task_results: dict) -> str:
    """What must be equal for runs to be seeds of one configuration: the results.json meta without
    seed/adapter, and the tasks with their evaluation settings."""
    rest = {k: v for k, v in meta.items() if k not in GROUP_IGNORED_META}
    tasks = {t: {k: r.get(k) for k in TASK_SETTINGS} for t, r in task_results.items()}
    return json.dumps([rest, tasks], sort_keys=True, default=str)


def seedless_name(name: str, seed) -> str:
    """A run folder name without its seed token and default timestamp ("" when nothing is left)."""
    name = _TIMESTAMP.sub("", name)
    token = re.escape(str(seed))
    name = re.sub(rf"(^|[_-])(?:seed|s)[-_=]?{token}(?=$|[_-])", "", name, flags=re.IGNORECASE)
    return name.strip("_- ")


def format_p(p: float, method: str = "") -> str:
    """"0.041", "3.2e-07", "<1e-300" (a p that underflowed); ", MC" for a Monte Carlo p."""
    text = "<1e-300" if p <= 0 else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")
    return text + (", MC" if method.startswith("MC") else "")
