"""spymacdvixy: long SPY while its daily MACD is above the signal line, otherwise hedge with VIXY.

Parameters (all optional):
    fast, slow, signal   MACD spans in trading days (12, 26, 9)
    spyWeight            SPY weight while bullish (1.0)
    vixyWeight           VIXY weight while bearish (1.0); SPY is flat then
    history              daily bars requested (120); at least slow + signal are needed
"""

from __future__ import annotations

from typing import Any, ClassVar

from consumer.strategies.base import InstrumentSpec, MarketData, SignalUnavailable, Strategy
from consumer.strategies.indicators import macd


class SpyMacdVixy(Strategy):
    """Long SPY while its daily MACD is above the signal line, otherwise VIXY as a hedge (module docstring: params).
    Raises SignalUnavailable when there are too few bars for the spans, rather than guessing.
    """

    id = "spymacdvixy"
    description = "SPY long on a bullish daily MACD crossover state, VIXY hedge otherwise."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "fast": {"type": "integer", "minimum": 2},
            "slow": {"type": "integer", "minimum": 3},
            "signal": {"type": "integer", "minimum": 2},
            "spyWeight": {"type": "number", "minimum": 0, "maximum": 2},
            "vixyWeight": {"type": "number", "minimum": 0, "maximum": 2},
            "history": {"type": "integer", "minimum": 30, "maximum": 1000},
        },
    }

    def instruments(self) -> dict[str, InstrumentSpec]:
        return {"SPY": InstrumentSpec(symbol="SPY"), "VIXY": InstrumentSpec(symbol="VIXY")}

    async def target_weights(self, market: MarketData) -> dict[str, float]:
        p = self.params
        fast, slow, signal = p.get("fast", 12), p.get("slow", 26), p.get("signal", 9)
        if fast >= slow:
            raise SignalUnavailable(f"fast ({fast}) must be shorter than slow ({slow})")
        bars = await market.daily_bars("SPY", days=p.get("history", 120))
        if len(bars) < slow + signal:
            raise SignalUnavailable(f"SPY: {len(bars)} daily bars, need at least {slow + signal}")
        m = macd([b.close for b in bars], fast, slow, signal)
        if m.macd[-1] > m.signal[-1]:
            return {"SPY": p.get("spyWeight", 1.0), "VIXY": 0.0}
        return {"SPY": 0.0, "VIXY": p.get("vixyWeight", 1.0)}
