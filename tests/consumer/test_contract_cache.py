"""The contract cache's document holds every field an Instrument is built from (issue 17), and its day rule."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ib_insync import Contract, ContractDetails

from consumer.broker.contract_cache import CachedContract, trading_day
from consumer.broker.instruments import _instrument, from_cache, to_cache
from consumer.store.contracts import from_document, to_document

FETCHED = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)


def details(**contract: object) -> ContractDetails:
    return ContractDetails(
        contract=Contract(**contract),  # type: ignore[arg-type]
        timeZoneId="US/Eastern",
        liquidHours="20260310:0930-20260310:1600;20260311:0930-20260311:1600",
        tradingHours="20260310:0400-20260310:2000;20260311:0400-20260311:2000",
        minTick=0.01,
    )


def test_an_instrument_round_trips_through_the_cache_document():
    for fields in (
        dict(
            conId=756733,
            symbol="SPY",
            secType="STK",
            exchange="SMART",
            primaryExchange="ARCA",
            currency="USD",
            localSymbol="SPY",
            tradingClass="SPY",
        ),
        dict(
            conId=495512563,
            symbol="ES",
            secType="FUT",
            exchange="CME",
            currency="USD",
            localSymbol="ESM6",
            tradingClass="ES",
            multiplier="50",
            lastTradeDateOrContractMonth="20260619",
        ),
        dict(conId=12087792, symbol="EUR", secType="CASH", exchange="IDEALPRO", currency="USD", localSymbol="EUR.USD"),
    ):
        original = _instrument(str(fields["symbol"]), details(**fields))
        document = to_document("key", to_cache(original, FETCHED))
        assert document["conId"] == fields["conId"]
        assert document["fetchedAt"] == FETCHED
        entry = from_document(document)
        assert entry is not None
        again = from_cache(original.key, entry)
        assert again == original  # every field: the contract's, time zone, both hours, multiplier, minTick
        assert again.contract.lastTradeDateOrContractMonth == fields.get("lastTradeDateOrContractMonth", "")
        assert again.multiplier == float(str(fields.get("multiplier", 1)))


def test_a_document_of_another_shape_is_a_miss_not_an_error():
    assert from_document({}) is None
    assert (
        from_document(
            {
                **to_document("k", to_cache(_instrument("SPY", details(conId=1, symbol="SPY")), FETCHED)),
                "fetchedAt": "x",
            }
        )
        is None
    )


def test_an_entry_is_fresh_on_the_new_york_day_it_was_fetched_only():
    entry = CachedContract({"conId": 1}, "US/Eastern", "", "", 0.01, datetime(2026, 3, 11, 3, 0, tzinfo=UTC))
    # 03:00 UTC is still the 10th in New York: fetched on the 10th's trading day.
    assert trading_day(entry.fetched_at) == date(2026, 3, 10)
    assert entry.fresh_on(date(2026, 3, 10))
    assert not entry.fresh_on(date(2026, 3, 11))
