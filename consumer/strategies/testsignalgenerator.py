"""testsignalgenerator: a deterministic signal from recent bars, run nightly as a dry run.

Each symbol is held long (an equal share of the capital) while its last close is above its simple moving average
over `lookback` days, and flat otherwise. Not meant to make money: meant to prove every night that market data,
signals, sizing and reporting work end to end.
"""

from __future__ import annotations

from typing import Any, ClassVar

from consumer.strategies.base import InstrumentSpec, MarketData, SignalUnavailable, Strategy
from consumer.strategies.indicators import sma


class TestSignalGenerator(Strategy):
    """Long each symbol (an equal share) while its last close is above its moving average, flat otherwise; run nightly
    as a dry run to prove market data, signals, sizing and reporting end to end.
    """

    __test__ = False  # its name starts with "Test"; pytest must not collect it

    id = "testsignalgenerator"
    description = "Long each symbol above its moving average, flat below; equal shares."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "symbols": {
                "type": "array",
                "items": {"type": "string", "pattern": "^[A-Z][A-Z0-9.]{0,20}$"},
                "minItems": 1,
                "maxItems": 100,
                "uniqueItems": True,
            },
            "lookback": {
                "description": "Moving-average window in trading days.",
                "type": "integer",
                "minimum": 2,
                "maximum": 1000,
            },
        },
    }
    DEFAULT_SYMBOLS = ("SPY", "QQQ", "IWM")

    def instruments(self) -> dict[str, InstrumentSpec]:
        return {s: InstrumentSpec(symbol=s) for s in self.params.get("symbols", self.DEFAULT_SYMBOLS)}

    async def target_weights(self, market: MarketData) -> dict[str, float]:
        lookback = self.params.get("lookback", 20)
        symbols = list(self.instruments())
        weights: dict[str, float] = {}
        for symbol in symbols:
            bars = await market.daily_bars(symbol, days=lookback * 2)
            if len(bars) < lookback:
                raise SignalUnavailable(f"{symbol}: {len(bars)} daily bars, need {lookback}")
            closes = [b.close for b in bars]
            weights[symbol] = 1.0 / len(symbols) if closes[-1] > sma(closes, lookback) else 0.0
        return weights
