"""Summaries every benchmark reports the same way: the median of several repetitions
with its spread, and percentiles of samples."""
from __future__ import annotations

import statistics


def spread(xs: list[float], nd: int = 3) -> dict | None:
    """{"median", "min", "max", "runs"} of repeated measurements (None: nothing measured)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd),
            "runs": [round(x, nd) for x in xs]}


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest rank."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def median(s: dict | float | None):
    """The median of a spread (or a plain figure as it is)."""
    return s.get("median") if isinstance(s, dict) else s


def ratio(a, b, nd: int = 3) -> float | None:
    """median(a) / median(b), None when either is missing or b is zero."""
    a, b = median(a), median(b)
    return round(a / b, nd) if a and b else None
