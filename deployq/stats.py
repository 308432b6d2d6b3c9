"""Confidence intervals for an accuracy measured on n samples, and McNemar's exact test
for two models scored on the same samples. Pure Python (math only): the report and the
compare gate use them without importing numpy's heavier neighbours.

An accuracy k/n is a binomial proportion. Wilson's score interval (Wilson 1927) is the
one the reports show: it stays inside [0, 1] and is close to nominal coverage even at
k = 0 or k = n, where the textbook normal interval collapses. Clopper-Pearson (1934)
inverts the binomial test: exact, never below nominal coverage, wider.

Two models scored on the same samples differ only on the discordant samples: b correct
for the first only, c for the second only. Under 'no difference' each discordant sample
falls either way with probability 1/2, so McNemar's exact test is a two-sided binomial
test of b against Binomial(b + c, 1/2) (McNemar 1947; the exact form for small b + c)."""
from __future__ import annotations

import math

Z95 = 1.959963984540054          # the standard normal's 97.5% quantile
ALPHA = 0.05                     # significance level of every test the reports show


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials; (0, 1) when n = 0."""
    _check(k, n)
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half),
            1.0 if k == n else min(1.0, centre + half))


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval: the p where P(X >= k) = alpha/2 and where
    P(X <= k) = alpha/2 for X ~ Binomial(n, p), found by bisection."""
    _check(k, n)
    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else _bisect(lambda p: 1 - _cdf(k - 1, n, p) - alpha / 2)
    hi = 1.0 if k == n else _bisect(lambda p: alpha / 2 - _cdf(k, n, p))
    return lo, hi


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant samples (1.0 when there
    are none): twice the smaller binomial tail of Binomial(b + c, 1/2), at most 1."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * _cdf(min(b, c), n, 0.5))


def paired(first: list[bool], second: list[bool]) -> dict:
    """McNemar on two per-sample correctness lists of the same samples: the discordant
    counts, the p-value and whether the difference is significant at ALPHA."""
    if len(first) != len(second):
        raise ValueError(f"paired test needs the same samples, got {len(first)} and "
                         f"{len(second)}")
    b = sum(1 for u, v in zip(first, second) if u and not v)
    c = sum(1 for u, v in zip(first, second) if v and not u)
    p = mcnemar(b, c)
    return {"first_only": b, "second_only": c, "p": p, "significant": p < ALPHA}


def _check(k: int, n: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def _cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact to rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * lp + (n - i) * lq for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _bisect(f, lo: float = 0.0, hi: float = 1.0, iters: int = 60) -> float:
    """The root of f, increasing in p on [lo, hi], to within 2^-60."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# --- per-sample correctness, stored compactly in results.json ----------------------

def pack(mask) -> str:
    """A boolean sequence as hex: bit i of the big-endian bit string is sample i."""
    bits = "".join("1" if v else "0" for v in mask)
    bits += "0" * (-len(bits) % 4)
    return "".join(f"{int(bits[i:i + 4], 2):x}" for i in range(0, len(bits), 4))


def unpack(text: str, n: int) -> list[bool]:
    """The first n booleans of pack()'s hex."""
    try:
        bits = "".join(f"{int(ch, 16):04b}" for ch in text)
    except ValueError:
        raise ValueError(f"not a hex mask: {text[:20]!r}") from None
    if len(bits) < n:
        raise ValueError(f"mask holds {len(bits)} samples, expected {n}")
    return [b == "1" for b in bits[:n]]


def interval(mask) -> list[float]:
    """Wilson 95% interval of a per-sample correctness mask's accuracy."""
    mask = list(mask)
    return list(wilson(sum(bool(v) for v in mask), len(mask)))
