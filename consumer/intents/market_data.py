"""collect-market-data: bars (and optionally a snapshot) per instrument, stored once per instrument and day.

Layout: accounts/{account}/tradingModes/{mode}/marketData/{symbol}/bars/{barSize}@{YYYY-MM-DD} holds that day's bars
as a list; a re-run overwrites the same documents with the same content, so collecting twice stores one copy.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from consumer.broker.instruments import Instrument
from consumer.broker.model import HistoricalBar
from consumer.intents.base import Intent, IntentContext
from consumer.store.batches import BatchedWrites
from consumer.strategies.base import InstrumentSpec

DEFAULT_INSTRUMENTS = ["SPY", "QQQ", "VIXY", "IWM", "TLT", "GLD"]


def _spec(item: str | dict[str, Any]) -> tuple[str, InstrumentSpec]:
    if isinstance(item, str):
        return item, InstrumentSpec(symbol=item, sec_type="CASH" if "." in item and len(item) == 7 else "STK")
    return item["symbol"], InstrumentSpec.parse(item["symbol"], item)


async def collect_market_data(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    services = ctx.services
    broker = ctx.broker
    bar_size = params.get("barSize", "1 day")
    duration = params.get("duration", "5 D")
    specs = dict(_spec(i) for i in params.get("instruments", DEFAULT_INSTRUMENTS))
    instruments = await broker.resolve(specs)

    async def bars_of(instrument: Instrument) -> list[HistoricalBar]:
        return await broker.bars(instrument, duration, bar_size)

    collected = await asyncio.gather(*(bars_of(i) for i in instruments.values()))
    snapshots = await broker.prices(instruments.values()) if params.get("snapshot") else {}
    size_key = bar_size.replace(" ", "")
    summary: dict[str, Any] = {}
    writer = BatchedWrites(services.db)
    now = datetime.now(UTC)
    for (symbol, instrument), bars in zip(instruments.items(), collected, strict=True):
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for bar in bars:
            by_day[bar.day].append(
                {"time": bar.time, "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
                 "volume": bar.volume}
            )  # fmt: skip
        instrument_ref = services.layout.market_data(symbol)
        for day, day_bars in by_day.items():
            await writer.set(
                instrument_ref.collection("bars").document(f"{size_key}@{day}"),
                {"symbol": symbol, "conId": instrument.con_id, "barSize": bar_size, "date": day, "bars": day_bars},
            )
        head = {"symbol": symbol, "conId": instrument.con_id, "currency": instrument.currency, "updatedAt": now}
        if instrument.con_id in snapshots:
            head["lastSnapshot"] = {"price": snapshots[instrument.con_id], "at": now}
        await writer.set(instrument_ref, head, merge=True)
        summary[symbol] = {"bars": len(bars), "days": sorted(by_day), "snapshot": snapshots.get(instrument.con_id)}
    # A dry run's store (consumer.store.dry_run) acknowledges these commits and writes nothing.
    await writer.flush()
    return {"barSize": bar_size, "duration": duration, "instruments": summary, "documents": writer.count}


INTENT = Intent(
    name="collect-market-data",
    handler=collect_market_data,
    description="Fetch bars (and snapshots) and store one document per instrument and day.",
)
