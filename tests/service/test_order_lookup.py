"""Before placing, a trading intent looks every leg up by orderRef: a first run in the connection's own record (no
request to the gateway), a redelivery or a run after a reconnect with a fresh download of the broker's orders. Its
books phase (the sweep, check_books) reads the same record while the connection holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.broker.gateway import State
from consumer.errors import Transient
from consumer.intents import builtin_intents
from consumer.intents.allocation import allocation as allocation_handler
from consumer.intents.base import Intent
from tests.support import (
    STREAM_RESTART_WAIT,
    Bus,
    allocation,
    another_intents_subscription,
    delete_mode_documents,
    holdings,
    mode_collection,
    mode_document,
    stock_positions,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")

CLIENT_ID = 1  # tests/support.py settings_for_tests
COMPLETED = "reqCompletedOrders"
# What the connection's record answers at no cost: the books phase and the lookup of a first run ask none of them.
DOWNLOADS = {COMPLETED, "reqExecutions", "reqPositions"}


def requests_until_placed(gateway: Any, since: int) -> list[str]:
    """Our client's requests received after position `since` of the gateway's log, up to its first placeOrder."""
    ours = [name for client, name in gateway.requests_received()[since:] if client == CLIENT_ID]
    assert "placeOrder" in ours, ours
    return ours[: ours.index("placeOrder")]


def placed_once_and_booked_once(gateway: Any, project: str, ref: str, only: bool = True) -> None:
    """The order is at the broker once by orderRef (`only`: and nothing else is), each execution booked once."""
    refs = [o["orderRef"] for o in gateway.orders()]
    assert (refs == [ref]) if only else (refs.count(ref) == 1), refs
    executions = sorted(e["execId"] for e in gateway.executions() if e["orderRef"] == ref)
    assert executions

    def booked() -> list[str]:
        return sorted(f["execId"] for f in mode_collection(project, "fills") if f.get("orderRef") == ref)

    wait_for(lambda: booked() == executions, what="each execution booked once")


def test_a_first_run_places_without_asking_for_orders_executions_or_positions(
    consumer, bus: Bus, gateway, project: str
):
    since = len(gateway.requests_received())
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="first-run")))
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert not line["existing"]
    asked = requests_until_placed(gateway, since)
    assert DOWNLOADS.isdisjoint(asked), asked  # the sweep, check_books and the lookup all read the record
    placed_once_and_booked_once(gateway, project, line["orderRef"])


def test_a_fill_made_while_the_consumer_was_down_is_booked_by_an_intents_sweep_from_the_record(
    consumer_factory, bus: Bus, gateway, project: str
):
    gateway.hold_fills(True)
    first = consumer_factory(order_timeout=1.0)
    left = bus.reply_to(bus.publish(allocation({"TLT": 0.05}, idempotencyKey="left-working")))
    (tlt,) = left["result"]["instruments"]
    assert tlt["outcome"] == "working", left
    first.stop()
    gateway.hold_fills(False)  # it fills while no consumer is connected: no live booking can see it
    filled = wait_for(lambda: stock_positions(gateway).get("TLT"), what="the fill at the broker")
    (tlt_exec,) = [e["execId"] for e in gateway.executions() if e["orderRef"] == tlt["orderRef"]]

    consumer_factory(intents_subscription=another_intents_subscription(project, "intents-restarted"))
    wait_for(lambda: holdings(project) == {"dummy": {"TLT": filled}}, what="the connect sweep's booking")
    wait_for(lambda: mode_collection(project, "openOrders") == [], what="the order closed")
    # The books lose it again (a restore from before the sweep): now only the intent's own sweep can book it, from
    # the executions the restarted consumer downloaded at connect.
    delete_mode_documents(project)

    since = len(gateway.requests_received())
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="after-the-restore")))
    assert reply["status"] == "ok", reply
    assert reply["result"]["booksReconciled"]["fillsApplied"] == 1, reply["result"]["booksReconciled"]
    asked = requests_until_placed(gateway, since)
    assert DOWNLOADS.isdisjoint(asked), asked
    (spy,) = reply["result"]["instruments"]
    placed_once_and_booked_once(gateway, project, spy["orderRef"], only=False)
    tlt_booked = [f["execId"] for f in mode_collection(project, "fills") if f.get("orderRef") == tlt["orderRef"]]
    assert tlt_booked == [tlt_exec]  # booked once, by execId, to no strategy (its order document is gone)
    assert holdings(project)["unallocated"] == {"TLT": filled}


def test_books_that_lost_a_position_are_refused_on_a_fresh_look_after_the_record_disagreed(
    consumer, bus: Bus, gateway, project: str
):
    first = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="bought")))
    assert first["status"] == "ok", first
    (line,) = first["result"]["instruments"]
    placed_once_and_booked_once(gateway, project, line["orderRef"])
    held = stock_positions(gateway)["SPY"]
    for doc in mode_document(project).collection("holdings").stream():
        doc.reference.delete()  # Firestore lost the holdings; the broker still has the position

    orders_before = len(gateway.orders())
    since = len(gateway.requests_received())
    refused = bus.reply_to(bus.publish(allocation({"SPY": 0.1}, idempotencyKey="more")))
    assert (refused["status"], refused["error"]["code"]) == ("error", "books_disagree"), refused
    assert [(d["instrument"], d["books"], d["broker"]) for d in refused["error"]["details"]] == [("SPY", 0, held)]
    assert len(gateway.orders()) == orders_before
    sent = [name for client, name in gateway.requests_received()[since:] if client == CLIENT_ID]
    # the first look read the record and disagreed; the refusal rests on one fresh look, not on the record alone
    assert sent.count("reqPositions") == 1, sent
    assert "placeOrder" not in sent, sent


def test_a_first_run_after_its_documents_were_lost_finds_its_legs_in_the_connection_record(
    consumer, bus: Bus, gateway, project: str
):
    request = allocation({"SPY": 0.05, "TLT": 0.05}, idempotencyKey="lost-and-found")
    first = bus.reply_to(bus.publish(request))
    assert first["status"] == "ok", first
    refs = sorted(line["orderRef"] for line in first["result"]["instruments"])
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs
    # Lost after the fact (a restore from an empty backup), not while a live booking of these fills is in flight:
    # one landing after the wipe would leave a booked fill without its holding.
    exec_ids = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: exec_ids <= {f.get("execId") for f in mode_collection(project, "fills")}, what="fills booked")
    delete_mode_documents(project)

    since = len(gateway.requests_received())
    again = bus.reply_to(bus.publish(request))  # its claim is gone: a first run by the claim
    assert again["status"] == "ok", again
    assert {line["orderRef"]: line["existing"] for line in again["result"]["instruments"]} == dict.fromkeys(refs, True)
    assert sorted(o["orderRef"] for o in gateway.orders()) == refs  # nothing placed again
    sent = [name for client, name in gateway.requests_received()[since:] if client == CLIENT_ID]
    assert "placeOrder" not in sent, sent
    assert COMPLETED not in sent, sent  # found in the record: nothing asked


def test_a_restarted_consumer_finds_a_working_leg_in_the_record_it_downloaded_at_connect(
    consumer_factory, bus: Bus, gateway, project: str
):
    consumer = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)  # the leg stays working at the broker
    request = allocation({"SPY": 0.05}, idempotencyKey="working-across-a-restart")
    first = bus.reply_to(bus.publish(request), timeout=90)  # reported working after the order timeout
    assert first["status"] == "ok", first
    (line,) = first["result"]["instruments"]
    ref = line["orderRef"]
    assert [(o["orderRef"], o["status"]) for o in gateway.orders()] == [(ref, "Submitted")]
    consumer.stop()
    delete_mode_documents(project)

    restarted = consumer_factory(intents_subscription=another_intents_subscription(project, "intents-restarted"))
    since = len(gateway.requests_received())  # after the restarted consumer's start-up download
    again = bus.reply_to(bus.publish(request), timeout=STREAM_RESTART_WAIT)
    assert again["status"] == "ok", again
    (found,) = again["result"]["instruments"]
    assert (found["orderRef"], found["existing"]) == (ref, True)
    assert [o["orderRef"] for o in gateway.orders()] == [ref]  # not placed twice
    sent = [name for client, name in gateway.requests_received()[since:] if client == CLIENT_ID]
    assert "placeOrder" not in sent, sent
    assert COMPLETED not in sent, sent
    gateway.hold_fills(False)  # it fills now, and the live stream books it once
    placed_once_and_booked_once(gateway, project, ref)
    restarted.stop()


def test_a_redelivery_asks_the_broker_afresh(consumer_factory, bus: Bus, gateway, project: str):
    runs: list[bool] = []

    async def failing_once(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.first_run)
        if len(runs) == 1:
            raise Transient("test_failure", "the first delivery fails before placing; the message is redelivered")
        return await allocation_handler(ctx, params)

    consumer_factory(intents={**builtin_intents(), "allocation": Intent("allocation", failing_once, "", trades=True)})
    since = len(gateway.requests_received())
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="redelivered")), timeout=90)
    assert reply["status"] == "ok", reply
    assert runs == [True, False]  # the redelivery took over the released claim
    assert COMPLETED in requests_until_placed(gateway, since)
    (line,) = reply["result"]["instruments"]
    placed_once_and_booked_once(gateway, project, line["orderRef"])


def test_a_reconnect_after_a_first_run_started_falls_back_to_asking_the_broker(
    consumer_factory, bus: Bus, gateway, project: str
):
    marks: list[int] = []

    async def reconnecting(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        broker = ctx.broker
        started = ctx.generation
        back: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_state(state: State) -> None:
            if state is State.CONNECTED and broker.generation not in (None, started) and not back.done():
                back.set_result(None)

        broker.add_listener(on_state)
        assert started is not None
        assert ctx.first_run
        assert await asyncio.to_thread(gateway.drop_connections) == 1
        await asyncio.wait_for(back, 30)  # the gateway's own reconnect, heard on its state event
        marks.append(len(await asyncio.to_thread(gateway.requests_received)))  # its start-up download is behind
        return await allocation_handler(ctx, params)

    consumer_factory(intents={**builtin_intents(), "allocation": Intent("allocation", reconnecting, "", trades=True)})
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, idempotencyKey="reconnected")), timeout=60)
    assert reply["status"] == "ok", reply
    assert COMPLETED in requests_until_placed(gateway, marks[0])
    (line,) = reply["result"]["instruments"]
    placed_once_and_booked_once(gateway, project, line["orderRef"])
