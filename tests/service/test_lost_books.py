"""Firestore data lost, restored or rolled back: the broker stays the authority, and no order is placed twice."""

from __future__ import annotations

import pytest

from tests.support import (
    STREAM_RESTART_WAIT,
    Bus,
    allocation,
    another_intents_subscription,
    delete_mode_documents,
    holdings,
    mode_collection,
    stock_positions,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

WEIGHTS = {"SPY": 0.05, "TLT": 0.05, "GLD": 0.05}
ALLOCATION = allocation(WEIGHTS, idempotencyKey="rebalance-after-a-restore")


def test_a_finished_allocation_redelivered_after_its_documents_were_deleted_places_nothing(
    bus: Bus, gateway, project: str
):
    first = bus.reply_to(bus.publish(ALLOCATION))
    assert first["status"] == "ok", first
    refs = sorted(line["orderRef"] for line in first["result"]["instruments"])
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs
    wait_for(lambda: set(holdings(project).get("dummy", {})) == set(WEIGHTS), what="the fills booked")
    positions = stock_positions(gateway)

    assert delete_mode_documents(project) > 0
    again = bus.reply_to(bus.publish(ALLOCATION))  # the same request id: its claim is gone too, so it runs again
    assert again["status"] == "ok", again
    assert not again.get("duplicate")
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs  # each leg found at the broker, none re-placed
    assert {line["orderRef"]: line["existing"] for line in again["result"]["instruments"]} == dict.fromkeys(refs, True)
    assert stock_positions(gateway) == positions
    # the executions the gateway still reports are booked again, once each, by execId; to no strategy, since the
    # orders that carried the shares are gone
    fills = mode_collection(project, "fills")
    assert sorted(f["execId"] for f in fills) == sorted(e["execId"] for e in gateway.executions())
    assert holdings(project) == {"unallocated": positions}


def test_books_that_lost_a_position_refuse_to_trade_it_until_reconciled(
    bus: Bus, gateway, project: str, consumer, consumer_factory
):
    first = bus.reply_to(bus.publish({**ALLOCATION, "idempotencyKey": "first"}))
    assert first["status"] == "ok", first
    wait_for(lambda: set(holdings(project).get("dummy", {})) == set(WEIGHTS), what="the fills booked")
    # A new day and a new process: yesterday's executions are reported by neither the gateway nor the client's
    # memory, so nothing can rebuild the lost books from them.
    consumer.stop()
    gateway.roll_day()
    delete_mode_documents(project)
    consumer_factory(intents_subscription=another_intents_subscription(project, "intents-consumer-restarted"))
    orders_before = len(gateway.orders())

    refused = bus.reply_to(bus.publish({**ALLOCATION, "idempotencyKey": "second"}), timeout=STREAM_RESTART_WAIT)
    assert (refused["status"], refused["error"]["code"]) == ("error", "books_disagree"), refused
    assert {d["instrument"] for d in refused["error"]["details"]} == set(WEIGHTS)
    assert len(gateway.orders()) == orders_before
    assert mode_collection(project, "openOrders") == []

    fixed = bus.reply_to(bus.publish({"intent": "reconcile", "params": {"fix": True}}))
    assert fixed["status"] == "ok", fixed
    assert holdings(project) == {"unallocated": stock_positions(gateway)}
    third = bus.reply_to(bus.publish({**ALLOCATION, "idempotencyKey": "third"}))
    assert third["status"] == "ok", third  # the books agree again; dummy's targets are bought anew, as it holds none
    assert all(line["order"] > 0 for line in third["result"]["instruments"])


def test_a_position_changed_behind_the_books_back_on_an_instrument_not_traded_does_not_block(
    bus: Bus, gateway, project: str
):
    gateway.set_position("AAPL", 10)
    reply = bus.reply_to(bus.publish({**ALLOCATION, "idempotencyKey": "spy-only"}))
    assert reply["status"] == "ok", reply
    gateway.set_position("SPY", stock_positions(gateway)["SPY"] + 3)
    blocked = bus.reply_to(
        bus.publish({**ALLOCATION, "idempotencyKey": "more-spy",
                     "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.1}}}}})
    )  # fmt: skip
    assert blocked["error"]["code"] == "books_disagree"
    assert [(d["instrument"], d["broker"] - d["books"]) for d in blocked["error"]["details"]] == [("SPY", 3)]
