"""Strategies: discovery, indicators against known values, and each strategy's signal from given bars."""

from __future__ import annotations

import math

import pytest
from jsonschema import Draft202012Validator

from consumer.strategies import discover
from consumer.strategies.base import Bar, SignalUnavailable
from consumer.strategies.indicators import ema, macd, sma

# Reference values computed with pandas: Series.ewm(span=n, adjust=False).mean(), the usual MACD definition.
CLOSES = [100 + 10 * math.sin(i / 5) + i * 0.3 for i in range(60)]


def test_ema_known_values() -> None:
    assert ema([1, 2, 3, 4, 5], 3) == pytest.approx([1.0, 1.5, 2.25, 3.125, 4.0625])


def test_macd_matches_pandas() -> None:
    m = macd(CLOSES, 12, 26, 9)
    assert m.macd[30] == pytest.approx(-0.6181238805581586, rel=1e-12)
    assert m.signal[30] == pytest.approx(-1.1209710927237357, rel=1e-12)
    assert m.macd[-1] == pytest.approx(-0.9566331100621142, rel=1e-12)
    assert m.signal[-1] == pytest.approx(-0.3462632620508863, rel=1e-12)
    assert m.histogram[-1] == pytest.approx(-0.9566331100621142 + 0.3462632620508863, rel=1e-12)


def test_sma_and_its_guard() -> None:
    assert sma([1, 2, 3, 4], 2) == 3.5
    with pytest.raises(ValueError, match="need 5 values"):
        sma([1, 2, 3, 4], 5)


def test_discovery_finds_the_shipped_strategies() -> None:
    assert {"dummy", "testsignalgenerator", "spymacdvixy"} <= set(discover())


@pytest.mark.parametrize("strategy_id", sorted(discover()))
def test_each_strategy_schema_is_valid(strategy_id: str) -> None:
    Draft202012Validator.check_schema(discover()[strategy_id].params_schema)


class Bars:
    """Market data from a fixed list of closes: the strategies' own logic, without a gateway."""

    def __init__(self, closes: dict[str, list[float]]) -> None:
        self.closes = closes

    async def daily_bars(self, symbol: str, days: int) -> list[Bar]:
        closes = self.closes.get(symbol, [])[-days:]
        return [Bar(f"d{i}", c, c, c, c, 0) for i, c in enumerate(closes)]

    async def price(self, symbol: str) -> float:
        return self.closes[symbol][-1]


async def test_spymacdvixy_goes_long_spy_on_a_bullish_macd() -> None:
    rising = [100 * 1.01**i for i in range(120)]  # accelerating trend: MACD above its signal
    weights = await discover()["spymacdvixy"]({}).target_weights(Bars({"SPY": rising}))
    assert weights == {"SPY": 1.0, "VIXY": 0.0}


async def test_spymacdvixy_hedges_with_vixy_when_bearish() -> None:
    falling = [100.0] * 100 + [100.0 - 2 * i for i in range(1, 21)]  # a flat market breaking down
    weights = await discover()["spymacdvixy"]({"vixyWeight": 0.3}).target_weights(Bars({"SPY": falling}))
    assert weights == {"SPY": 0.0, "VIXY": 0.3}


async def test_spymacdvixy_without_enough_history_has_no_signal() -> None:
    with pytest.raises(SignalUnavailable, match="need at least 35"):
        await discover()["spymacdvixy"]({}).target_weights(Bars({"SPY": [100.0] * 20}))


async def test_testsignalgenerator_is_long_above_its_average_and_flat_below() -> None:
    up = [float(i) for i in range(1, 41)]
    down = [float(i) for i in range(40, 0, -1)]
    strategy = discover()["testsignalgenerator"]({"symbols": ["UP", "DOWN"], "lookback": 10})
    weights = await strategy.target_weights(Bars({"UP": up, "DOWN": down}))
    assert weights == {"UP": 0.5, "DOWN": 0.0}


async def test_dummy_returns_its_weights_and_instruments() -> None:
    strategy = discover()["dummy"]({"weights": {"SPY": 0.2, "SAP": -0.1}, "instruments": {"SAP": {"currency": "EUR"}}})
    assert await strategy.target_weights(Bars({})) == {"SPY": 0.2, "SAP": -0.1}
    assert strategy.instruments()["SAP"].currency == "EUR"
    assert strategy.instruments()["SPY"].exchange == "SMART"
