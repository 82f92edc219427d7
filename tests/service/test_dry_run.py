"""A dry run writes nothing but its claim and activity record, for every intent that writes (issue 12, bug 2).

Each test leaves something for the real run to write (an execution of another client that is not booked yet, a
position changed behind the books' back, orders to place), takes every document of the test's project, sends the
dry run, and checks that the only documents it added are its claim and its activity record, and that it changed
none: every collection is listed, recursively.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from google.cloud import firestore

from tests.support import (
    TEST_ACCOUNT,
    Bus,
    account_document,
    activity,
    allocation,
    ensure_loop,
    every_document,
    mode_collection,
    mode_document,
    stock_positions,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

MANUAL_REF = "manual-by-another-client"


@pytest.fixture
def consumer(consumer_factory):
    """An order only accepted is reported as working after this long (the held-fills test)."""
    return consumer_factory(order_timeout=3.0)


# The contract-details cache: IB's reference data, the same answer a real run fetches; a dry run may fill it
# (docs/decisions.md, 6). Everything else must be left as it was.
CONTRACT_CACHE = f"accounts/{TEST_ACCOUNT}/contracts/"


def documents(project: str) -> dict[str, Any]:
    """Every document of the project but the contract cache, by path, with its last update time (documents under
    missing parents too)."""
    return {
        path: snapshot.update_time
        for path, snapshot in every_document(project).items()
        if not path.startswith(CONTRACT_CACHE)
    }


def claim_path(request_id: str) -> str:
    return f"accounts/{TEST_ACCOUNT}/tradingModes/paper/requests/{hashlib.sha256(request_id.encode()).hexdigest()}"


def dry_run(bus: Bus, project: str, body: dict[str, Any]) -> dict[str, Any]:
    """Publishes `body` as a dry run and checks it added only its claim and activity record, changing nothing."""
    before = documents(project)
    reply = bus.reply_to(bus.publish({**body, "dryRun": True}))
    assert reply["status"] == "ok", reply
    assert reply["dryRun"] is True
    # The reply is published while the claim and activity record are committed: wait for the record.
    wait_for(lambda: activity(project, requestId=reply["requestId"]), what="the activity record")
    after = documents(project)
    changed = sorted(path for path, updated in before.items() if after.get(path) != updated)
    assert changed == [], "the dry run changed or deleted documents"
    added = sorted(set(after) - set(before))
    records = [p for p in added if p.startswith(f"accounts/{TEST_ACCOUNT}/activity/")]
    assert len(records) == 1, added
    assert sorted(set(added) - set(records)) == [claim_path(reply["requestId"])]
    return reply


def trade_by_another_client(gateway: Any, quantity: int = 5) -> dict[str, Any]:
    """An execution the consumer was not told about (updates go to the client that placed the order)."""
    from ib_insync import IB, MarketOrder, Stock

    ensure_loop()  # an async test before this one may have left this thread without an event loop
    other = IB()
    other.connect("127.0.0.1", gateway.port, clientId=9, timeout=10)
    try:
        other.placeOrder(Stock("SPY", "SMART", "USD"), MarketOrder("BUY", quantity, orderRef=MANUAL_REF))
        return wait_for(
            lambda: next((e for e in gateway.executions() if e["orderRef"] == MANUAL_REF), None),
            what="the other client's execution",
        )
    finally:
        other.disconnect()


def fill_ids(project: str) -> set[str]:
    return {f["execId"] for f in mode_collection(project, "fills")}


def allocation_anytime(weights: dict[str, float]) -> dict[str, Any]:
    return allocation(weights, ignoreMarketHours=True)


def settled(project: str, gateway: Any) -> None:
    """Waits until the live bookkeeper has booked every execution of ours and closed every order."""
    ours = {e["execId"] for e in gateway.executions() if e["orderRef"] != MANUAL_REF}
    wait_for(lambda: ours <= fill_ids(project) and not mode_collection(project, "openOrders"), what="books settled")


def test_trade_reconciliation_dry_run_reports_the_unbooked_fill_and_books_nothing(bus: Bus, gateway, project: str):
    execution = trade_by_another_client(gateway)

    reply = dry_run(bus, project, {"intent": "trade-reconciliation"})
    assert [f["execId"] for f in reply["result"]["fillsApplied"]] == [execution["execId"]]
    assert execution["execId"] not in fill_ids(project)

    real = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))  # the check above could fail: now it books
    assert [f["execId"] for f in real["result"]["fillsApplied"]] == [execution["execId"]]
    assert execution["execId"] in fill_ids(project)


def test_allocation_dry_run_places_and_books_nothing(bus: Bus, gateway, project: str):
    execution = trade_by_another_client(gateway)  # the books' sweep before sizing would book it

    reply = dry_run(bus, project, allocation_anytime({"SPY": 0.1, "TLT": 0.05}))
    legs = {i["instrument"]: i for i in reply["result"]["instruments"]}
    assert legs["SPY"]["order"] > 0
    assert legs["TLT"]["order"] > 0
    assert [o for o in gateway.orders() if o["orderRef"] != MANUAL_REF] == []
    assert gateway.executions() == [execution]
    assert fill_ids(project) == set()


def test_close_all_dry_run_sells_and_books_nothing(bus: Bus, gateway, project: str):
    assert bus.reply_to(bus.publish(allocation_anytime({"TLT": 0.05})))["status"] == "ok"
    settled(project, gateway)
    held = stock_positions(gateway)["TLT"]
    execution = trade_by_another_client(gateway)
    orders_before = gateway.orders()

    reply = dry_run(bus, project, {"intent": "close-all", "ignoreMarketHours": True,
                                   "params": {"strategies": ["dummy"]}})  # fmt: skip
    legs = {i["instrument"]: i for i in reply["result"]["instruments"]}
    assert legs["TLT"]["order"] == -held
    assert gateway.orders() == orders_before
    assert stock_positions(gateway)["TLT"] == held
    assert execution["execId"] not in fill_ids(project)


def test_a_dry_run_beside_a_working_order_leaves_it_and_its_books_alone(bus: Bus, gateway, project: str):
    gateway.hold_fills(True)
    try:
        working = bus.reply_to(bus.publish(allocation_anytime({"SPY": 0.05})))
        spy = next(i for i in working["result"]["instruments"] if i["instrument"] == "SPY")
        assert spy["outcome"] == "working"
        orders_before = gateway.orders()

        reply = dry_run(bus, project, allocation_anytime({"SPY": 0.1}))
        leg = next(i for i in reply["result"]["instruments"] if i["instrument"] == "SPY")
        assert leg["working"] == spy["order"]  # the working order counts; only the rest would be ordered
        assert leg["order"] > 0
        assert gateway.orders() == orders_before  # nothing placed, nothing cancelled
        assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [spy["orderRef"]]
    finally:
        gateway.hold_fills(False)
    executions = wait_for(
        lambda: [e for e in gateway.executions() if e["orderRef"] == spy["orderRef"]], what="the working order filled"
    )
    wait_for(lambda: {e["execId"] for e in executions} <= fill_ids(project), what="its fills booked by execId")
    wait_for(lambda: not mode_collection(project, "openOrders"), what="the order closed")


def test_cash_balancer_dry_run_converts_nothing(bus: Bus, gateway, project: str):
    eur = gateway.cash()["EUR"]
    reply = dry_run(bus, project, {"intent": "cash-balancer", "ignoreMarketHours": True, "params": {"threshold": 1000}})
    by_currency = {b["currency"]: b for b in reply["result"]["balances"]}
    assert by_currency["EUR"]["action"] == "convert"
    assert gateway.orders() == []
    assert gateway.cash()["EUR"] == eur


def test_reconcile_fix_dry_run_books_no_difference(bus: Bus, gateway, project: str):
    execution = trade_by_another_client(gateway)
    gateway.set_position("TLT", 7)

    reply = dry_run(bus, project, {"intent": "reconcile", "params": {"fix": True}})
    differences = {d["instrument"]: d["difference"] for d in reply["result"]["differences"]}
    assert differences["TLT"] == 7
    assert execution["execId"] not in fill_ids(project)
    assert mode_collection(project, "holdings") == []
    assert mode_collection(project, "adjustments") == []
    assert mode_collection(project, "reconciliations") == []


def test_collect_market_data_dry_run_over_a_year_stores_no_bar(bus: Bus, project: str):
    """The reported case: two instruments, daily bars over a year, more than one 400-write batch."""
    body = {"intent": "collect-market-data",
            "params": {"instruments": ["SPY", "QQQ"], "barSize": "1 day", "duration": "1 Y"}}  # fmt: skip
    reply = dry_run(bus, project, body)
    assert reply["result"]["documents"] > 400
    assert reply["result"]["instruments"]["SPY"]["bars"] > 200

    real = bus.reply_to(bus.publish(body))  # the same message for real stores every document it counts
    assert real["result"]["documents"] == reply["result"]["documents"]
    stored = [p for p in documents(project) if p.startswith(f"accounts/{TEST_ACCOUNT}/tradingModes/paper/marketData/")]
    assert len(stored) == real["result"]["documents"]


async def test_batched_writes_commit_at_every_limit_whatever_the_write(project: str):
    """Firestore refuses a batch over 500 writes: the writer commits whenever its batch is full."""
    from consumer.store.batches import BatchedWrites

    db = firestore.AsyncClient(project=project)
    try:
        writer = BatchedWrites(db, limit=3)
        for n in range(7):
            await writer.set(db.collection("batched").document(f"d{n}"), {"n": n}, merge=n % 2 == 0)
        assert len(batched(project)) == 6  # two full batches committed, the seventh write still open
        await writer.flush()
    finally:
        db.close()
    assert writer.count == 7
    assert batched(project) == [f"batched/d{n}" for n in range(7)]


def batched(project: str) -> list[str]:
    return sorted(p for p in documents(project) if p.startswith("batched/"))


def test_risk_check_dry_run_halts_reduces_and_stores_nothing(bus: Bus, gateway, project: str):
    """Limits breached with the actions that write (halt, reduce), and the day's first value (riskState)."""
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.9})))
    assert reply["status"] == "ok", reply
    settled(project, gateway)
    held = stock_positions(gateway)
    snapshots = mode_document(project).collection("snapshots")
    snapshots.document("2026-06-15").set({"date": "2026-06-15", "highWaterMark": 1e9})
    write_config(project, risk={"drawdown": {"max": 0.01, "action": "halt"}, "dailyLoss": {"max": 0.5},
                                "concentration": {"max": 0.1, "action": "reduce"}})  # fmt: skip
    checked = dry_run(bus, project, {"intent": "risk-check", "params": {}})
    assert sorted(b["limit"] for b in checked["result"]["breaches"]) == ["concentration", "drawdown"]
    assert checked["result"]["halted"]["dryRun"] is True
    (reduced,) = checked["result"]["reduced"]
    assert reduced["instruments"][0]["order"] < 0
    assert stock_positions(gateway) == held
    assert account_document(project).collection("config").document("paper").get().to_dict()["tradingEnabled"]
