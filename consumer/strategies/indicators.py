"""Indicators in plain Python: a few exponential averages do not justify numpy or pandas in the image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average, alpha = 2 / (span + 1), seeded with the first value (pandas' adjust=False)."""
    if span < 1:
        raise ValueError("span must be at least 1")
    if not values:
        return []
    alpha = 2.0 / (span + 1)
    out = [float(values[0])]
    for v in values[1:]:
        out.append(alpha * float(v) + (1 - alpha) * out[-1])
    return out


@dataclass(frozen=True, slots=True)
class Macd:
    """A MACD line and its signal line over the same closes (`macd`); `histogram` is their difference."""

    macd: list[float]
    signal: list[float]

    @property
    def histogram(self) -> list[float]:
        return [m - s for m, s in zip(self.macd, self.signal, strict=True)]


def macd(closes: Sequence[float], fast: int = 12, slow: int = 26, signal: int = 9) -> Macd:
    """MACD line (fast EMA - slow EMA) and its signal line (EMA of the MACD line)."""
    if not fast < slow:
        raise ValueError("the fast span must be shorter than the slow one")
    line = [f - s for f, s in zip(ema(closes, fast), ema(closes, slow), strict=True)]
    return Macd(macd=line, signal=ema(line, signal))


def sma(values: Sequence[float], window: int) -> float:
    if window < 1 or len(values) < window:
        raise ValueError(f"need {window} values, have {len(values)}")
    return sum(values[-window:]) / window
