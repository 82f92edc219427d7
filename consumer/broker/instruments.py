"""Finding instruments at the broker: specs to qualified contracts with what sizing and hours need.

Runs on the broker loop. Resolution is one concurrent burst of contract-detail requests; an unknown or ambiguous
instrument is an error naming it, never a silent skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ib_insync import IB, Contract, ContractDetails

from consumer.broker import views
from consumer.broker.hours import closed_reason, good_after, is_open, next_open
from consumer.errors import IntentError
from consumer.strategies.base import InstrumentSpec


@dataclass(frozen=True)
class Instrument:
    """A qualified contract with what sizing and market hours need. `contract` is ib_insync's: only consumer.broker
    reads it; everyone else uses the properties and `describe`."""

    key: str
    contract: Contract
    multiplier: float
    time_zone: str
    liquid_hours: str
    trading_hours: str
    min_tick: float = 0.0  # price increment from contract details; 0 when the broker gave none

    @property
    def con_id(self) -> int:
        return self.contract.conId

    @property
    def currency(self) -> str:
        return self.contract.currency

    @property
    def symbol(self) -> str:
        return self.contract.localSymbol or self.contract.symbol

    def open_at(self, now: datetime) -> bool:
        hours = self.liquid_hours or self.trading_hours
        return is_open(hours, self.time_zone, now) if hours else True

    def takes_while_closed(self, now: datetime, properties: Mapping[str, Any], order_type: str) -> bool:
        """Whether IB takes an order with these `orderProperties` while the market is closed and works it later,
        so the closed-market check lets it through: a stock's OPG (executes at the open), a goodAfterTime at or
        after the next open, an outsideRth limit order for a stock in its extended (trading) hours."""
        stock = self.sec_type == "STK"
        if stock and properties.get("tif") == "OPG":
            return True
        after = good_after(str(properties.get("goodAfterTime", "")), self.time_zone)
        opens = next_open(self.liquid_hours or self.trading_hours, self.time_zone, now)
        if after is not None and opens is not None and after >= opens:
            return True
        extended = stock and properties.get("outsideRth") is True and order_type == "LMT" and bool(self.trading_hours)
        return extended and is_open(self.trading_hours, self.time_zone, now)

    def closed_at(self, now: datetime) -> str:
        """The symbol and when its market next opens, for a rejection while `open_at(now)` is False."""
        return closed_reason(self.symbol, self.liquid_hours or self.trading_hours, self.time_zone, now)

    @property
    def sec_type(self) -> str:
        return self.contract.secType

    def describe(self) -> dict[str, Any]:
        return views.contract(self.contract)


def contract_for(spec: InstrumentSpec) -> Contract:
    if spec.sec_type == "CASH":
        base, _, quote = spec.symbol.replace("/", ".").partition(".")
        return Contract(secType="CASH", symbol=base, currency=quote or spec.currency, exchange="IDEALPRO")
    return Contract(
        secType=spec.sec_type,
        symbol=spec.symbol,
        exchange=spec.exchange,
        currency=spec.currency,
        primaryExchange=spec.primary_exchange,
        lastTradeDateOrContractMonth=spec.last_trade,
    )


class Instruments:
    """Resolved instruments, cached by spec for the life of the connection's session."""

    def __init__(self, ib: IB) -> None:
        self._ib = ib
        self._cache: dict[InstrumentSpec, Instrument] = {}

    async def resolve(self, specs: Mapping[str, InstrumentSpec]) -> dict[str, Instrument]:
        missing = {spec for spec in specs.values() if spec not in self._cache}
        found = await asyncio.gather(*(self._details(spec) for spec in missing))
        problems = []
        for spec, details in zip(missing, found, strict=True):
            if not details:
                problems.append(f"{spec.symbol}: unknown at the broker ({_describe(spec)})")
            elif len(details) > 1:
                where = ", ".join(
                    sorted({f"{c.exchange or c.primaryExchange}/{c.currency}" for d in details if (c := d.contract)})
                )
                problems.append(f"{spec.symbol}: ambiguous ({where}); give its exchange and currency")
            else:
                self._cache[spec] = _instrument(spec.symbol, details[0])
        if problems:
            raise IntentError("unknown_instrument", "; ".join(sorted(problems)))
        return {key: self._cache[spec] for key, spec in specs.items()}

    async def by_con_id(self, con_id: int) -> Instrument:
        return await self.by_contract(Contract(conId=con_id))

    async def by_contract(self, contract: Contract) -> Instrument:
        """The instrument for a contract the broker reported (a position or a fill), by its conId."""
        for instrument in self._cache.values():
            if instrument.con_id == contract.conId:
                return instrument
        details = await self._ib.reqContractDetailsAsync(Contract(conId=contract.conId))
        if not details:
            raise IntentError("unknown_instrument", f"conId {contract.conId} ({contract.symbol}) unknown at the broker")
        found = details[0].contract
        assert found is not None
        spec = InstrumentSpec(symbol=found.localSymbol or found.symbol, sec_type=found.secType)
        instrument = _instrument(spec.symbol, details[0])
        self._cache[spec] = instrument
        return instrument

    async def _details(self, spec: InstrumentSpec) -> list[ContractDetails]:
        return await self._ib.reqContractDetailsAsync(contract_for(spec))


async def fx_pair(instruments: Instruments, currency: str, base: str) -> tuple[Instrument, bool]:
    """The IDEALPRO pair for currency/base and whether `currency` is its base (EUR.USD) or its quote (USD.JPY)."""
    for symbol, currency_is_base in ((f"{currency}.{base}", True), (f"{base}.{currency}", False)):
        try:
            found = await instruments.resolve({symbol: InstrumentSpec(symbol=symbol, sec_type="CASH")})
        except IntentError:
            continue
        return found[symbol], currency_is_base
    raise IntentError("no_fx_pair", f"no IDEALPRO pair for {currency}/{base}")


def _instrument(key: str, details: ContractDetails) -> Instrument:
    contract = details.contract
    assert contract is not None
    if contract.secType == "STK" and not contract.exchange:
        contract.exchange = "SMART"
    try:
        multiplier = float(contract.multiplier or 1) or 1.0
    except ValueError:
        multiplier = 1.0
    return Instrument(
        key=key,
        contract=contract,
        multiplier=multiplier,
        time_zone=details.timeZoneId,
        liquid_hours=details.liquidHours,
        trading_hours=details.tradingHours,
        min_tick=float(details.minTick or 0.0),
    )


def _describe(spec: InstrumentSpec) -> str:
    parts = [spec.sec_type, spec.exchange, spec.currency or "any currency"]
    if spec.last_trade:
        parts.append(spec.last_trade)
    return " ".join(parts)
