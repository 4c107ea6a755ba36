"""Intervals for ``prefkit eval`` and the score gaps of ``prefkit label stats``: pure functions of numbers
(no torch, no numpy needed).

* Win rate: the Wilson score interval (Wilson 1927) for a binomial proportion. With s successes of n
  trials, p = s / n and z the normal quantile (1.959964 for 95 %):

      centre    = (p + z^2 / (2n)) / (1 + z^2 / n)
      half      = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
      interval  = [centre - half, centre + half]

  Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at p = 0 or 1, which
  is where a clearly better model lands.
* Win rate with ties. prefkit's win rate counts a tie as half a win: w = (W + T / 2) / N for W wins,
  T ties, L losses, N = W + T + L. Its interval is the sign test's (ties carry no information on which
  model is better, so the test drops them): the Wilson interval [q_lo, q_hi] of the W wins among the
  D = W + L decisive pairs, put on w's scale with the observed share of decisive pairs,

      w = 1/2 + (D / N) (q - 1/2)   for q = q_lo, q_hi

  so it excludes 1/2 exactly when the 95 % Wilson interval of W / D does, whatever the number of ties.
  (It is conditional on D, so it is a little narrow in the scale of the effect when D / N is itself
  uncertain; it never moves the test.) Treating each tie as half a binomial trial instead, as a first
  version did, is very conservative when most pairs are ties: 13 wins, 113 ties and 2 losses gave
  [0.457, 0.627] that way, [0.514, 0.554] this way (13 of 15 decisive: [0.621, 0.963]). With no
  decisive pair there is nothing to test: value 1/2, no interval. ``decisive`` reports W / D itself.
* Means: mean +- t_{0.975, n-1} * sd / sqrt(n) (Student t; for paired score differences this is the
  paired t interval). The t quantile comes from a table for 1..30 degrees of freedom and the
  Cornish-Fisher expansion beyond (Abramowitz & Stegun 26.7.5; error < 1e-5 for df > 30).
* Score gaps. A label set made from per-sample scores calls the pair with the higher score the winner
  unless the gap |score_0 - score_1| is <= --tie-margin. :func:`gap_summary` gives the gaps' quantiles
  (linear interpolation between order statistics, numpy's default), how many pairs fall within a few
  candidate margins, and a suggested margin: 1 % of the interquartile range of the per-sample scores,
  rounded to 2 significant digits (1 % of their range when the IQR is 0). That is a heuristic, not a
  measurement: it calls two images whose scores differ by less than a hundredth of the usual spread of
  scores equally good. The judges give the same image the same score, so there is no re-score noise to
  measure; with a noisy judge, score the same images twice and use the spread of those differences.
* Agreement of two raters on the same items (a judge against human votes): Cohen's kappa,
  kappa = (p_o - p_e) / (1 - p_e), p_o the share of items both put in the same category, p_e the share
  expected by chance, sum over categories of the product of the two raters' marginal shares (Cohen
  1960). Its 95 % interval is kappa +- z SE with Cohen's large-sample SE = sqrt(p_o (1 - p_o) / n) /
  (1 - p_e), clipped to [-1, 1]; it is undefined when p_e = 1 (both raters always give one category).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # the 0.975 quantile of N(0, 1)

# t_{0.975, df} for df = 1 .. 30 (standard tables, 4 decimals)
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval [low, high] of a proportion successes / n (successes may be fractional:
    ties count 1/2). n must be positive."""
    if n <= 0:
        raise ValueError("the Wilson interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, n = {n}]")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (the 95 % two-sided multiplier)."""
    if df < 1:
        raise ValueError("t needs at least 1 degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = Z95, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )


def mean_interval(values: Sequence[float]) -> dict[str, float | int | None]:
    """{n, mean, std (sample, ddof 1), low, high (95 % t interval of the mean), min, max}; std and the
    interval are None below two values."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "low": None, "high": None, "min": None, "max": None}
    mean = math.fsum(values) / n
    out: dict[str, float | int | None] = {"n": n, "mean": mean, "std": None, "low": None, "high": None}
    if n >= 2:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        out.update(std=std, low=mean - half, high=mean + half)
    out.update(min=min(values), max=max(values))
    return out


def win_rate(wins: int, ties: int, losses: int) -> dict[str, Any]:
    """{value, low, high}: the win rate with ties as half a win and its 95 % interval from the sign test
    (module docstring); ``decisive``: {value, low, high} of wins / (wins + losses) with its Wilson
    interval. Values are None without comparisons; low and high are None without a decisive pair."""
    none = {"value": None, "low": None, "high": None}
    n = wins + ties + losses
    if n == 0:
        return {**none, "decisive": dict(none)}
    decided = wins + losses
    value = (wins + ties / 2) / n
    if decided == 0:
        return {"value": value, "low": None, "high": None, "decisive": dict(none)}
    q_lo, q_hi = wilson_interval(wins, decided)
    share = decided / n
    return {
        "value": value,
        "low": 0.5 + share * (q_lo - 0.5),
        "high": 0.5 + share * (q_hi - 0.5),
        "decisive": {"value": wins / decided, "low": q_lo, "high": q_hi},
    }


# -- score gaps ------------------------------------------------------------------------------------------

GAP_QUANTILES = (
    ("min", 0.0),
    ("10%", 0.1),
    ("25%", 0.25),
    ("50%", 0.5),
    ("75%", 0.75),
    ("90%", 0.9),
    ("max", 1.0),
)
TIE_MARGIN_SHARE = 0.01  # the suggested --tie-margin: this share of the scores' interquartile range
CANDIDATE_FACTORS = (0.0, 0.1, 1.0, 5.0, 10.0)  # the candidate margins, in units of the suggested one


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of ``values`` by linear interpolation between the order statistics
    (Hyndman & Fan type 7, numpy's default). ``values`` must not be empty."""
    if not values:
        raise ValueError("the quantile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} outside [0, 1]")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    i = math.floor(pos)
    if i + 1 >= len(xs):
        return float(xs[-1])
    return float(xs[i] + (pos - i) * (xs[i + 1] - xs[i]))


def suggested_tie_margin(scores: Sequence[float]) -> float:
    """1 % of the interquartile range of ``scores`` (1 % of their range when the IQR is 0), rounded to 2
    significant digits; 0 when all scores are equal or there are none (module docstring: a heuristic)."""
    if len(scores) < 2:
        return 0.0
    spread = quantile(scores, 0.75) - quantile(scores, 0.25) or max(scores) - min(scores)
    return float(f"{TIE_MARGIN_SHARE * spread:.2g}")


def gap_summary(
    gaps: Sequence[float], scores: Sequence[float], used: float | None = None, suggest: bool = True
) -> dict[str, Any]:
    """The distribution of a label set's score gaps (|score_0 - score_1| of its pairs).

    ``scores``: the per-sample scores the suggestion is taken from; ``used``: the --tie-margin the set was
    made with (None: no margin applied, as for a pairwise judge); ``suggest=False`` leaves the suggestion
    out (None) but keeps its scale for the candidates. Returns {pairs, quantiles: {min, 10%, ..., max},
    scores_iqr, suggested, used, within: [{margin, pairs, share, suggested}] (pairs with gap <= margin,
    for the candidate margins 0, 0.1x, 1x, 5x, 10x the suggested one, and the one used)}."""
    n = len(gaps)
    if n == 0:
        raise ValueError("no gaps")
    if any(g < 0 or not math.isfinite(g) for g in gaps):
        raise ValueError("gaps must be finite and >= 0")
    base = suggested_tie_margin(scores)
    iqr = quantile(scores, 0.75) - quantile(scores, 0.25) if scores else None
    margins = sorted(
        {float(f"{f * base:.2g}") for f in CANDIDATE_FACTORS} | ({used} if used is not None else set())
    )
    within = []
    for m in margins:
        k = sum(g <= m for g in gaps)
        within.append({"margin": m, "pairs": k, "share": k / n, "suggested": suggest and m == base})
    return {
        "pairs": n,
        "quantiles": {name: quantile(gaps, q) for name, q in GAP_QUANTILES},
        "scores_iqr": iqr,
        "suggested": base if suggest else None,
        "used": used,
        "within": within,
    }


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], z: float = Z95) -> dict[str, Any]:
    """Cohen's kappa of two raters' categories ``a`` and ``b`` of the same items (module docstring):
    {n, observed, expected, kappa, low, high}; kappa and its interval are None when undefined."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"{n} ratings against {len(b)}: the raters must rate the same items")
    if n == 0:
        return {"n": 0, "observed": None, "expected": None, "kappa": None, "low": None, "high": None}
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    categories = set(a) | set(b)
    expected = math.fsum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    if expected >= 1.0:
        return {"n": n, "observed": observed, "expected": expected, "kappa": None, "low": None, "high": None}
    kappa = (observed - expected) / (1 - expected)
    se = math.sqrt(observed * (1 - observed) / n) / (1 - expected)
    return {
        "n": n,
        "observed": observed,
        "expected": expected,
        "kappa": kappa,
        "low": max(-1.0, kappa - z * se),
        "high": min(1.0, kappa + z * se),
    }
