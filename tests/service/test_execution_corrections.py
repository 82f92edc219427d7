"""IB's execution corrections through the simulated gateway and Firestore.

IB corrects an execution with a new one whose execId differs only in the digits after the final period
("...01.01" -> "...01.02"). Booked as a fill of its own, it doubled the position in the books. It is booked in place
of the execution it corrects: the books end as if only the correction had happened, and a sweep, which sees
every version again, changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.cloud.firestore import AsyncClient

from consumer.store.books import Books, Execution, PendingOrder
from consumer.store.layout import Layout
from tests.support import (
    SIGNAL_PARAMS,
    TEST_ACCOUNT,
    Bus,
    allocation,
    holdings,
    long_signal,
    mode_collection,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config")

SPY_CON_ID = "756733"


def spy_position(project: str) -> dict[str, Any]:
    (dummy,) = [d for d in mode_collection(project, "holdings") if d["_id"] == "dummy"]
    return dummy["positions"][SPY_CON_ID]


def spy_realized(project: str) -> float:
    (dummy,) = [d for d in mode_collection(project, "holdings") if d["_id"] == "dummy"]
    return float(dummy.get("realized", {}).get(SPY_CON_ID, {}).get("realizedPnl", 0.0))


def fills_by_id(project: str) -> dict[str, dict[str, Any]]:
    return {f["execId"]: f for f in mode_collection(project, "fills")}


def test_a_corrected_execution_replaces_the_booked_one_and_a_sweep_books_nothing_twice(
    bus: Bus, gateway, project: str, consumer_factory
):
    consumer_factory(order_timeout=3.0)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.1})))
    assert reply["status"] == "ok", reply
    (spy,) = reply["result"]["instruments"]
    bought = spy["target"]
    assert 0 < bought <= 500  # one execution (maxFillSize 500)
    (execution,) = [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]]
    first = execution["execId"]
    wait_for(lambda: fills_by_id(project).get(first, {}).get("commission") is not None, what="the fill booked")
    commission = fills_by_id(project)[first]["commission"]

    # IB corrects the price: the books keep the quantity and take the corrected cost.
    repriced = gateway.correct_execution(first, price=execution["price"] + 0.5)
    wait_for(lambda: repriced in fills_by_id(project), what="the correction booked")
    assert holdings(project) == {"dummy": {"SPY": bought}}
    fills = fills_by_id(project)
    assert fills[first]["correctedBy"] == repriced
    assert (fills[repriced]["corrects"], fills[repriced]["price"]) == (first, execution["price"] + 0.5)
    assert fills[repriced]["strategies"] == {"dummy": bought}
    cost = bought * (execution["price"] + 0.5) + commission  # what the corrected execution alone would have cost
    assert spy_position(project)["avgCost"] == pytest.approx(cost / bought)
    assert spy_realized(project) == pytest.approx(0.0, abs=1e-9)

    # IB corrects the shares: the books follow the broker, and the P&L is the corrected execution's alone.
    fewer = gateway.correct_execution(repriced, shares=bought - 10)
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": bought - 10}}, what="the smaller correction booked")
    assert gateway.positions() == {"SPY": bought - 10}
    fills = fills_by_id(project)
    assert (fills[repriced]["correctedBy"], fills[fewer]["corrects"]) == (fewer, repriced)
    position = spy_position(project)
    cost = (bought - 10) * (execution["price"] + 0.5) + commission
    assert position["quantity"] * position["avgCost"] - spy_realized(project) == pytest.approx(cost)
    (order,) = [o for o in mode_collection(project, "orders") if o["orderRef"] == spy["orderRef"]]
    assert order["filled"] == bought - 10
    assert order["execIds"] == [first, repriced, fewer]

    # A sweep asks the gateway for the day's executions: it sees all three versions again and books none twice.
    swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation", "params": {}}))
    assert swept["status"] == "ok", swept
    assert swept["result"]["fillsAppliedCount"] == 0
    check = bus.reply_to(bus.publish({"intent": "reconcile", "params": {}}))
    assert check["status"] == "ok", check
    assert check["result"]["consistent"] is True, check["result"]["differences"]
    assert holdings(project) == {"dummy": {"SPY": bought - 10}}
    assert set(fills_by_id(project)) == {first, repriced, fewer}
    assert spy_position(project) == position
    # The day's figures count the corrected execution once, with one commission.
    day = bus.reply_to(bus.publish({"intent": "eod-check", "params": {}}))
    assert day["status"] == "ok", day
    assert (day["result"]["fills"], day["result"]["commissions"]) == (1, {"USD": commission})
    assert (day["result"]["unbooked"], day["result"]["withoutCommission"]) == ([], [])


def test_a_corrected_execution_shared_by_two_strategies_leaves_each_book_whole_shares(
    bus: Bus, gateway, project: str, consumer_factory
):
    """One order buys SPY for dummy and testsignalgenerator; IB corrects its execution to a share fewer. Each book
    keeps whole shares, adding up to the corrected execution, as if only it had happened (parts never move
    back). Scaled in proportion, the books held fractions (dummy 19.62 and testsignalgenerator 32.38 of 52):
    the next order for one strategy alone would be for a fraction of a share."""
    consumer_factory(order_timeout=3.0)
    write_config(project, exposure={"overall": 0.1, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}})
    symbol, _ = long_signal(bus, gateway)
    reply = bus.reply_to(
        bus.publish({"intent": "allocation", "params": {"strategies": ["dummy", "testsignalgenerator"],
                     "strategyParams": {"dummy": {"weights": {symbol: 0.2}}, "testsignalgenerator": SIGNAL_PARAMS}}})
    )  # fmt: skip
    assert reply["status"] == "ok", reply
    (spy,) = [i for i in reply["result"]["instruments"] if i["instrument"] == symbol]
    parts = spy["strategies"]
    assert set(parts) == {"dummy", "testsignalgenerator"}, parts
    assert all(q > 0 for q in parts.values()), parts
    bought = sum(parts.values())
    (execution,) = [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]]
    first = execution["execId"]
    wait_for(lambda: fills_by_id(project).get(first, {}).get("commission") is not None, what="the fill booked")
    assert holdings(project) == {s: {symbol: q} for s, q in parts.items()}

    fewer = gateway.correct_execution(first, shares=bought - 1)
    wait_for(lambda: fewer in fills_by_id(project), what="the correction booked")
    assert gateway.positions() == {symbol: bought - 1}
    booked = holdings(project)
    assert sum(held[symbol] for held in booked.values()) == bought - 1, booked
    assert all(float(held[symbol]).is_integer() for held in booked.values()), booked
    assert all(0 <= parts[s] - held[symbol] <= 1 for s, held in booked.items()), booked  # one book gives the share
    fills = fills_by_id(project)
    assert (fills[first]["correctedBy"], fills[fewer]["corrects"]) == (fewer, first)
    assert fills[fewer]["strategies"] == {s: held[symbol] for s, held in booked.items()}
    (order,) = [o for o in mode_collection(project, "orders") if o["orderRef"] == spy["orderRef"]]
    assert order["filled"] == bought - 1
    assert order["booked"] == {s: held[symbol] for s, held in booked.items()}
    check = bus.reply_to(bus.publish({"intent": "reconcile", "params": {}}))
    assert check["status"] == "ok", check
    assert check["result"]["consistent"] is True, check["result"]["differences"]


def test_a_correction_booked_before_the_version_it_corrects_leaves_that_version_applied_to_nothing(project: str):
    """Not seen from IB (it sends corrections after what they correct, and a sweep books oldest first), but a
    delivery order is no guarantee: the older version, arriving second, is kept marked and moves nothing."""

    def spy(exec_id: str, shares: float, price: float) -> Execution:
        return Execution(
            exec_id=exec_id, order_ref="", perm_id=7, con_id=int(SPY_CON_ID), symbol="SPY", sec_type="STK",
            currency="USD", exchange="ARCA", multiplier=1.0, side="BOT", shares=shares, price=price,
            time="2026-12-01T15:00:00+00:00", commission=1.0, commission_currency="USD", account=TEST_ACCOUNT,
            fx_rate=1.0,
        )  # fmt: skip

    async def book(executions: list[Execution]) -> list[str]:
        books = Books(Layout(AsyncClient(project=project), TEST_ACCOUNT, "paper"))
        results, _ = await books.book_all(executions)
        return results

    assert asyncio.run(book([spy("0000e0d5.0000abcd.01.02", 90, 520.5)])) == ["applied"]
    assert asyncio.run(book([spy("0000e0d5.0000abcd.01.01", 100, 520.0)])) == ["known"]
    assert asyncio.run(book([spy("0000e0d5.0000abcd.01.01", 100, 520.0)])) == ["known"]  # a sweep again
    assert holdings(project) == {"unallocated": {"SPY": 90}}
    fills = fills_by_id(project)
    assert fills["0000e0d5.0000abcd.01.01"]["correctedBy"] == "0000e0d5.0000abcd.01.02"
    assert fills["0000e0d5.0000abcd.01.01"]["strategies"] == {}


@pytest.mark.parametrize(
    ("corrected_to", "books"),
    [
        (3, {"s0": {"SPY": 16}, "s1": {"SPY": 14}}),  # completes the order: each book at its share
        (5, {"s0": {"SPY": 16}, "s1": {"SPY": 14}, "unallocated": {"SPY": 2}}),  # beyond it: to unallocated
    ],
)
def test_a_correction_upwards_is_split_as_the_order_would_split_it(project: str, corrected_to: int, books: dict):
    """An order of 30 shared 16/14 fills 27 (14/13) and 2 (1/1); IB corrects the 2 to more. Scaled on its own, the
    correction of 2 split 1/1 became 1/2 for 3: testsignalgenerator's book past its share (15 of 14), dummy's short
    of it; and a correction past the order's quantity went to the strategies, not to unallocated (decision 43)."""
    order_ref = "allocation-r1-756733"

    def spy(exec_id: str, shares: float) -> Execution:
        return Execution(
            exec_id=exec_id, order_ref=order_ref, perm_id=7, con_id=int(SPY_CON_ID), symbol="SPY", sec_type="STK",
            currency="USD", exchange="ARCA", multiplier=1.0, side="BOT", shares=shares, price=520.0,
            time="2026-12-01T15:00:00+00:00", commission=1.0, commission_currency="USD", account=TEST_ACCOUNT,
            fx_rate=1.0,
        )  # fmt: skip

    async def run() -> Books:
        books = Books(Layout(AsyncClient(project=project), TEST_ACCOUNT, "paper"))
        instrument = {"conId": int(SPY_CON_ID), "symbol": "SPY", "secType": "STK", "currency": "USD"}
        await books.write_pending([PendingOrder(order_ref, "r1", "allocation", instrument, 30, {"s0": 16, "s1": 14})])
        assert await books.book_all([spy("0000e0d5.0000abcd.01.01", 27), spy("0000e0d5.0000abcd.02.01", 2)])
        return books

    asyncio.run(run())
    assert holdings(project) == {"s0": {"SPY": 15}, "s1": {"SPY": 14}}
    parts = {e: f["strategies"] for e, f in fills_by_id(project).items()}
    assert parts == {"0000e0d5.0000abcd.01.01": {"s0": 14, "s1": 13}, "0000e0d5.0000abcd.02.01": {"s0": 1, "s1": 1}}

    async def correct() -> list[str]:
        books = Books(Layout(AsyncClient(project=project), TEST_ACCOUNT, "paper"))
        results, _ = await books.book_all([spy("0000e0d5.0000abcd.02.02", corrected_to)])
        return results

    assert asyncio.run(correct()) == ["applied"]
    assert holdings(project) == books
    assert mode_collection(project, "openOrders") == []  # complete: closed Filled, as a fill completing it would
    (order,) = mode_collection(project, "orders")
    assert (order["state"], order["filled"], order["booked"]) == ("Filled", 27 + corrected_to, {"s0": 16, "s1": 14})
    correction = fills_by_id(project)["0000e0d5.0000abcd.02.02"]
    assert sum(correction["strategies"].values()) == corrected_to
