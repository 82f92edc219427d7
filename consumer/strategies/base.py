"""What a strategy is: given market data, target weights for its own instruments.

A weight is the signed fraction of the strategy's capital (its share of net liquidation) to hold in an instrument:
0.5 is half of it long, -0.2 a fifth of it short. Strategies never see holdings, orders or other strategies; the
allocation turns weights into orders. A strategy that cannot compute its signal raises `SignalUnavailable` (or
anything else): it is skipped and reported, never read as "target zero".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class SignalUnavailable(Exception):
    """The strategy has no signal today (missing data, too little history...)."""


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """How to find an instrument at the broker. The key a strategy uses for it is its symbol."""

    symbol: str
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = ""
    primary_exchange: str = ""
    last_trade: str = ""  # futures: contract month or expiry

    @classmethod
    def parse(cls, symbol: str, spec: Mapping[str, Any] | None = None) -> InstrumentSpec:
        spec = spec or {}
        return cls(
            symbol=symbol,
            sec_type=spec.get("secType", "STK"),
            exchange=spec.get("exchange", "SMART"),
            currency=spec.get("currency", ""),
            primary_exchange=spec.get("primaryExchange", ""),
            last_trade=spec.get("lastTradeDateOrContractMonth", ""),
        )


@dataclass(frozen=True, slots=True)
class Bar:
    """One daily bar as strategies see it (`MarketData.daily_bars`), oldest first; `date` as IB gives it."""

    date: str
    open: float
    high: float
    low: float
    close: float
    volume: float


class MarketData(Protocol):
    """What strategies may ask of the market (implemented on the broker loop by consumer.broker.market)."""

    async def daily_bars(self, symbol: str, days: int) -> list[Bar]:
        """Completed sessions, oldest first: a session under way has no bar yet (its close is not known)."""
        ...

    async def price(self, symbol: str) -> float: ...


class Strategy(ABC):
    """A strategy: its `id` (the module's name, found by consumer.strategies.discover), its params' schema, the
    instruments it may hold and, given market data, its target weights. Built per allocation with its own params;
    it sees prices and bars only, never holdings, orders or other strategies."""

    id: ClassVar[str]
    description: ClassVar[str]
    # JSON Schema of this strategy's entry in allocation params.strategyParams.
    params_schema: ClassVar[dict[str, Any]] = {"type": "object", "additionalProperties": False}

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    @abstractmethod
    def instruments(self) -> dict[str, InstrumentSpec]:
        """The instruments this strategy may hold, by the symbol it uses for them."""

    @abstractmethod
    async def target_weights(self, market: MarketData) -> dict[str, float]:
        """Signed weights per symbol; instruments left out are targeted at zero."""
