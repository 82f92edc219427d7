"""collect-market-data: bars (and optionally a snapshot) per instrument, stored once per instrument and day.

Layout: accounts/{account}/tradingModes/{mode}/marketData/{symbol}/bars/{barSize}@{YYYY-MM-DD} holds that day's bars
as a list, in time order. A collect merges its bars into the documents already there, by bar time (the new bar wins
on the same time): collecting twice stores one copy, and a collect never deletes a bar stored before. That matters
for intraday bars, grouped by their UTC date: a session that crosses midnight UTC (IDEALPRO opens at 17:15 New York,
the previous UTC date) puts the next day's first bars in the same document as the day before's, and a collect that
replaced the document threw the day before's bars away. The read and the write are not one transaction: two collects
of one instrument and bar size at the same time may each miss the other's new bars, never the ones stored before.

An instrument whose history IB refuses (no market-data permission, a competing live session) is named with IB's
code and text and the others are stored (`alert`); when IB refuses every one, nothing was collected and the intent
fails `history_refused`. Pacing, an unanswered request and a lost connection fail it as Transient (retried).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from typing import Any

from google.cloud.firestore import AsyncDocumentReference

from consumer.broker.broker import Broker
from consumer.broker.instruments import Instrument
from consumer.broker.market import HistoryRefused
from consumer.broker.model import HistoricalBar, Prices
from consumer.intents.base import Intent, IntentContext
from consumer.store.batches import BatchedWrites
from consumer.strategies.base import InstrumentSpec

DEFAULT_INSTRUMENTS = ["SPY", "QQQ", "VIXY", "IWM", "TLT", "GLD"]
# HistoryRefused's message: "AAPL history: IB error 162: Historical Market Data Service error message:...".
IB_ERROR = re.compile(r"IB error (\d+): (.*)", re.DOTALL)

BarDocument = dict[str, Any]


def _spec(item: str | dict[str, Any]) -> tuple[str, InstrumentSpec]:
    if isinstance(item, str):
        return item, InstrumentSpec(symbol=item, sec_type="CASH" if "." in item and len(item) == 7 else "STK")
    return item["symbol"], InstrumentSpec.parse(item["symbol"], item)


def _refusal(e: HistoryRefused) -> str:
    """IB's code and text, as a snapshot's refusal says them: "IB 162: Historical Market Data Service error ..."."""
    found = IB_ERROR.search(e.message)
    return f"IB {found.group(1)}: {found.group(2)}" if found else e.message


async def _histories(
    broker: Broker, instruments: dict[str, Instrument], duration: str, bar_size: str
) -> tuple[dict[str, list[HistoricalBar]], dict[str, str]]:
    """Every instrument's bars, and apart, by symbol, IB's refusal of those it refused. Anything else (pacing, no
    answer, the connection lost) fails the collect, to be retried; IB refusing every instrument fails it too."""
    answers = await asyncio.gather(
        *(broker.bars(i, duration, bar_size) for i in instruments.values()), return_exceptions=True
    )
    bars: dict[str, list[HistoricalBar]] = {}
    refused: dict[str, HistoryRefused] = {}
    for symbol, answer in zip(instruments, answers, strict=True):
        if isinstance(answer, HistoryRefused):
            refused[symbol] = answer
        elif isinstance(answer, BaseException):
            raise answer
        else:
            bars[symbol] = answer
    if refused and not bars:
        raise HistoryRefused("history_refused", "; ".join(e.message for e in refused.values()))
    return bars, {symbol: _refusal(e) for symbol, e in refused.items()}


def _by_day(bars: list[HistoricalBar]) -> dict[str, list[BarDocument]]:
    by_day: dict[str, list[BarDocument]] = defaultdict(list)
    for bar in bars:
        by_day[bar.day].append(
            {"time": bar.time, "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
             "volume": bar.volume}
        )  # fmt: skip
    return by_day


async def _merged(
    ctx: IntentContext, refs: dict[str, AsyncDocumentReference], by_day: dict[str, list[BarDocument]]
) -> None:
    """Adds the bars stored before in each day's document to the day's new ones (`by_day`, changed in place): by
    bar time, the new bar winning on the same time, in time order."""
    stored = {s.id: s.to_dict() or {} async for s in ctx.services.db.get_all(list(refs.values())) if s.exists}
    for day, ref in refs.items():
        old = stored.get(ref.id, {}).get("bars") or []
        new_times = {b["time"] for b in by_day[day]}
        kept = [b for b in old if b.get("time") not in new_times]
        by_day[day] = sorted([*kept, *by_day[day]], key=lambda b: str(b["time"]))


async def _store(
    ctx: IntentContext,
    writer: BatchedWrites,
    symbol: str,
    instrument: Instrument,
    bars: list[HistoricalBar],
    bar_size: str,
) -> dict[str, Any]:
    """Merges the instrument's bars into its day documents; their summary in the reply."""
    by_day = _by_day(bars)
    days = ctx.services.layout.market_data(symbol).collection("bars")
    size_key = bar_size.replace(" ", "")
    refs = {day: days.document(f"{size_key}@{day}") for day in by_day}
    if refs:
        await _merged(ctx, refs, by_day)
    for day, day_bars in by_day.items():
        await writer.set(
            refs[day],
            {"symbol": symbol, "conId": instrument.con_id, "barSize": bar_size, "date": day, "bars": day_bars},
        )
    return {"bars": len(bars), "days": sorted(by_day)}


async def collect_market_data(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    broker = ctx.broker
    bar_size = params.get("barSize", "1 day")
    duration = params.get("duration", "5 D")
    specs = dict(_spec(i) for i in params.get("instruments", DEFAULT_INSTRUMENTS))
    instruments = await broker.resolve(specs)
    collected, refused = await _histories(broker, instruments, duration, bar_size)
    snapshots = await broker.prices(instruments.values()) if params.get("snapshot") else Prices()
    summary: dict[str, Any] = {}
    writer = BatchedWrites(services.db)
    now = ctx.market_now()  # the gateway's clock (decision 5)
    for symbol, instrument in instruments.items():
        entry: dict[str, Any] = {}
        head: dict[str, Any] = {}
        if symbol in collected:
            entry = await _store(ctx, writer, symbol, instrument, collected[symbol], bar_size)
            head["updatedAt"] = now
        else:
            entry["refused"] = refused[symbol]
        entry.update(_snapshot(snapshots, instrument.con_id))
        if instrument.con_id in snapshots:
            head["lastSnapshot"] = {"price": snapshots[instrument.con_id], "at": now}
        if head:  # an instrument IB refused without a snapshot price: no document says it was collected
            head.update(symbol=symbol, conId=instrument.con_id, currency=instrument.currency)
            await writer.set(services.layout.market_data(symbol), head, merge=True)
        summary[symbol] = entry
    # A dry run's store (consumer.store.dry_run) acknowledges these commits and writes nothing.
    await writer.flush()
    result: dict[str, Any] = {
        "barSize": bar_size,
        "duration": duration,
        "instruments": summary,
        "documents": writer.count,
    }
    no_snapshot = params.get("snapshot") and any(e["snapshot"] is None for e in summary.values())
    if refused or no_snapshot:
        result["alert"] = True  # work left undone that a person must see (contributing.md, "Add an intent" 4)
    return result


def _snapshot(snapshots: Prices, con_id: int) -> dict[str, Any]:
    """The snapshot's price (None when none was asked for or came) and, when IB refused it, IB's code and text."""
    entry: dict[str, Any] = {"snapshot": snapshots.get(con_id)}
    if con_id in snapshots.refused:
        entry["snapshotRefused"] = snapshots.refused[con_id]
    return entry


INTENT = Intent(
    name="collect-market-data",
    handler=collect_market_data,
    description="Fetch bars (and snapshots) and store one document per instrument and day.",
)
