"""Finding instruments at the broker: specs to qualified contracts with what sizing and hours need.

Runs on the broker loop. Resolution is one concurrent burst of contract-detail requests; an unknown or ambiguous
instrument is an error naming it, never a silent skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from ib_insync import IB, Contract, ContractDetails

from consumer.broker import views
from consumer.broker.contract_cache import CachedContract, CacheUnavailable, ContractStore, trading_day
from consumer.broker.hours import closed_reason, closes_at, good_after, is_open, next_open
from consumer.errors import IntentError, Transient, UnlistedInstrument
from consumer.logs import get_logger
from consumer.strategies.base import InstrumentSpec

log = get_logger(__name__)


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

    @property
    def expires_on(self) -> date | None:
        """A future's last trade date (None for anything else, or a month IB gave without its day)."""
        last = self.contract.lastTradeDateOrContractMonth if self.sec_type == "FUT" else ""
        return date(int(last[:4]), int(last[4:6]), int(last[6:8])) if len(last) >= 8 and last[:8].isdigit() else None

    @property
    def session_hours(self) -> str:
        """The hours IB works an order in: a stock's regular (liquid) hours, since outside them a plain order is
        held; a future's or a currency pair's whole trading session (CME Globex, IDEALPRO), whose liquid hours
        are only the old pit session: refused there, an ES order waited 17 hours a day for nothing."""
        if self.sec_type in ("FUT", "CASH"):
            return self.trading_hours or self.liquid_hours
        return self.liquid_hours or self.trading_hours

    def open_at(self, now: datetime) -> bool:
        hours = self.session_hours
        return is_open(hours, self.time_zone, now) if hours else True

    def takes_while_closed(self, now: datetime, properties: Mapping[str, Any], order_type: str) -> bool:
        """Whether IB takes an order with these `orderProperties` while the market is closed and works it later,
        so the closed-market check lets it through: a stock's OPG (executes at the open), a goodAfterTime at or
        after the next open, an outsideRth limit order for a stock in its extended (trading) hours."""
        stock = self.sec_type == "STK"
        if stock and properties.get("tif") == "OPG":
            return True
        after = good_after(str(properties.get("goodAfterTime", "")), self.time_zone)
        opens = next_open(self.session_hours, self.time_zone, now)
        if after is not None and opens is not None and after >= opens:
            return True
        extended = stock and properties.get("outsideRth") is True and order_type == "LMT" and bool(self.trading_hours)
        return extended and is_open(self.trading_hours, self.time_zone, now)

    def seconds_to_open(self, now: datetime) -> float | None:
        """Until its market next opens (None when its hours list no later session)."""
        opens = next_open(self.session_hours, self.time_zone, now)
        return (opens - now).total_seconds() if opens is not None else None

    def seconds_to_close(self, now: datetime) -> float | None:
        """Until the session open now ends (None while its market is closed, or its hours list none)."""
        closes = closes_at(self.session_hours, self.time_zone, now) if self.session_hours else None
        return (closes - now).total_seconds() if closes is not None else None

    def closed_at(self, now: datetime) -> str:
        """The symbol and when its market next opens, for a rejection while `open_at(now)` is False."""
        return closed_reason(self.symbol, self.session_hours, self.time_zone, now)

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
    """Resolved instruments: in memory for the process, in the deployment's contract store (when given) across
    processes. An entry fetched before the current trading day (`trading_day` of the gateway's clock) is fetched
    again: its liquid/trading hours cover a few days only. One entry per spec, so memory stays one per instrument.
    """

    def __init__(self, ib: IB, store: ContractStore | None = None, now: Callable[[], datetime] | None = None) -> None:
        self._ib = ib
        self._store = store
        self._now = now or (lambda: datetime.now(UTC))
        self._cache: dict[InstrumentSpec, tuple[Instrument, date]] = {}
        # Looked up by conId (a position, a fill): kept apart from the specs. Filed under InstrumentSpec(symbol,
        # secType), a held SAP on IBIS answered a strategy's bare "SAP" that IB calls ambiguous (IBIS and NYSE).
        self._by_con_id: dict[int, tuple[Instrument, date, str]] = {}  # (instrument, day, its store key)
        self._background: set[asyncio.Task[None]] = set()

    async def resolve(self, specs: Mapping[str, InstrumentSpec]) -> dict[str, Instrument]:
        today = trading_day(self._now())
        missing = {spec for spec in specs.values() if not self._fresh(spec, today)}
        if missing and self._store is not None:
            by_key = {spec_key(spec): spec for spec in missing}
            for key, entry in (await self._read(by_key.keys())).items():
                if entry.fresh_on(today):
                    spec = by_key[key]
                    self._cache[spec] = (from_cache(spec.symbol, entry), today)
                    missing.discard(spec)
        found = await asyncio.gather(*(self._details(spec) for spec in missing))
        problems = []
        fetched: dict[str, CachedContract] = {}
        for spec, details in zip(missing, found, strict=True):
            if not details:
                problems.append(f"{spec.symbol}: unknown at the broker ({_describe(spec)})")
            elif len(details) > 1:
                where = ", ".join(
                    sorted({f"{c.exchange or c.primaryExchange}/{c.currency}" for d in details if (c := d.contract)})
                )
                problems.append(f"{spec.symbol}: ambiguous ({where}); give its exchange and currency")
            else:
                instrument = _instrument(spec.symbol, details[0])
                self._cache[spec] = (instrument, today)
                fetched[spec_key(spec)] = to_cache(instrument, self._now())
        await self._write(fetched)
        if problems:
            raise IntentError("unknown_instrument", "; ".join(sorted(problems)))
        return {key: self._cache[spec][0] for key, spec in specs.items()}

    async def by_con_id(self, con_id: int) -> Instrument:
        return await self.by_contract(Contract(conId=con_id))

    async def by_contract(self, contract: Contract) -> Instrument:
        """The instrument for a contract the broker reported (a position or a fill), by its conId."""
        today = trading_day(self._now())
        held = self._by_con_id.get(contract.conId)
        if held is not None and held[1] >= today:
            return held[0]
        for instrument, day in self._cache.values():
            if instrument.con_id == contract.conId and day >= today:
                return instrument
        if self._store is not None:
            try:
                stored = await self._store.find(contract.conId)
            except CacheUnavailable as e:
                log.warning("contract cache unreadable, asking IB", error=str(e))
                stored = None
            if stored is not None and stored[1].fresh_on(today):
                entry = stored[1]
                spec = _spec_of(entry.contract.get("localSymbol") or entry.contract.get("symbol"), entry)
                instrument = from_cache(spec.symbol, entry)
                self._by_con_id[contract.conId] = (instrument, today, stored[0])
                return instrument
        details = await self._ib.reqContractDetailsAsync(Contract(conId=contract.conId))
        if not details:
            raise await self._no_contract(contract, today)
        found = details[0].contract
        assert found is not None
        instrument = _instrument(found.localSymbol or found.symbol, details[0])
        key = f"conId|{contract.conId}"  # found by `find`; never a spec's key, which a bare symbol resolves through
        self._by_con_id[contract.conId] = (instrument, today, key)
        await self._write({key: to_cache(instrument, self._now())})
        return instrument

    async def _no_contract(self, contract: Contract, today: date) -> Exception:
        """Why IB answered 200 for a conId it reported before. Only a future it still finds with `includeExpired`,
        past its last trade date, is unlisted for good (a run leaves it as it is). Otherwise it is IB's passing 200,
        as it answers while its data connections are down (ib_insync#330), or a delisting: retried (and, if it
        lasts, dead-lettered with this reason), never read as an expiry, which left a held stock unsold."""
        named = f" ({contract.symbol})" if contract.symbol else ""
        found = await self._ib.reqContractDetailsAsync(Contract(conId=contract.conId, includeExpired=True))
        expired = found[0].contract if found else None
        last = expired.lastTradeDateOrContractMonth[:8] if expired is not None else ""
        if expired is not None and expired.secType == "FUT" and last and last <= today.strftime("%Y%m%d"):
            return UnlistedInstrument(
                contract.conId,
                f"{expired.localSymbol or expired.symbol} (conId {contract.conId}) expired on its last trade date "
                f"{last}: IB lists no contract for it any more",
            )
        return Transient(
            "contract_unavailable",
            f"IB answered no contract for conId {contract.conId}{named}, which is no expired future: IB says so while "
            "its data connections are down; retried",
        )

    def forget(self, con_id: int) -> None:
        """Drops every entry for this conId, here and in the store, so the next resolve asks IB: IB answered 200
        (no security definition) for it, so the cached contract no longer names an instrument."""
        dropped = [spec for spec, (instrument, _) in self._cache.items() if instrument.con_id == con_id]
        for spec in dropped:
            del self._cache[spec]
        by_con_id = self._by_con_id.pop(con_id, None)
        if (dropped or by_con_id) and self._store is not None:
            # With the key it was found under (a spec's, for an entry an earlier process resolved by its symbol).
            keys = [spec_key(s) for s in dropped] + ([by_con_id[2]] if by_con_id else [])
            task = asyncio.get_running_loop().create_task(self._delete(keys))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _fresh(self, spec: InstrumentSpec, today: date) -> bool:
        held = self._cache.get(spec)
        return held is not None and held[1] >= today

    async def _read(self, keys: Collection[str]) -> dict[str, CachedContract]:
        assert self._store is not None
        try:
            return await self._store.get_all(keys)
        except CacheUnavailable as e:
            log.warning("contract cache unreadable, asking IB", error=str(e), instruments=len(keys))
            return {}

    async def _write(self, entries: Mapping[str, CachedContract]) -> None:
        if not entries or self._store is None:
            return
        try:
            await self._store.put_all(entries)
        except CacheUnavailable as e:
            log.warning("contract cache not written", error=str(e), instruments=len(entries))

    async def _delete(self, keys: list[str]) -> None:
        assert self._store is not None
        try:
            await self._store.delete(keys)
        except CacheUnavailable as e:
            log.warning("contract cache entry not dropped", error=str(e), keys=keys)

    async def _details(self, spec: InstrumentSpec) -> list[ContractDetails]:
        return await self._ib.reqContractDetailsAsync(contract_for(spec))


def spec_key(spec: InstrumentSpec) -> str:
    """The store's key for a spec: every field that decides what IB answers for it."""
    fields = (spec.sec_type, spec.symbol, spec.exchange, spec.currency, spec.primary_exchange, spec.last_trade)
    return "|".join(fields)


def _spec_of(symbol: Any, entry: CachedContract) -> InstrumentSpec:
    return InstrumentSpec(symbol=str(symbol), sec_type=str(entry.contract.get("secType", "STK")))


def to_cache(instrument: Instrument, fetched_at: datetime) -> CachedContract:
    """What the store keeps of an instrument: the Contract's plain fields (no combo legs: contract details of a
    single instrument have none) and the details `_instrument` read."""
    contract = {
        f.name: value
        for f in dataclasses.fields(Contract)
        if isinstance(value := getattr(instrument.contract, f.name), (str, int, float, bool))
    }
    return CachedContract(
        contract=contract,
        time_zone=instrument.time_zone,
        liquid_hours=instrument.liquid_hours,
        trading_hours=instrument.trading_hours,
        min_tick=instrument.min_tick,
        fetched_at=fetched_at,
    )


def from_cache(key: str, entry: CachedContract) -> Instrument:
    known = {f.name for f in dataclasses.fields(Contract)}
    details = ContractDetails(
        contract=Contract(**{k: v for k, v in entry.contract.items() if k in known}),
        timeZoneId=entry.time_zone,
        liquidHours=entry.liquid_hours,
        tradingHours=entry.trading_hours,
        minTick=entry.min_tick,
    )
    return _instrument(key, details)


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
