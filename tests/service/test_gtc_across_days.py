"""A GTC order across IB's day boundary: IB reports the current day's executions only, so a part filled on an earlier
day is known from the order alone (decisions 34, 66) or from the position (decision 44). Checked at the broker by
orderRef and in Firestore by execId."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import (
    STANDBY,
    Bus,
    allocation,
    another_intents_subscription,
    holdings,
    mode_collection,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("paper_config")

GTC_MKT = {"orderType": "MKT", "algo": "none", "tif": "GTC"}
SPY_TARGET = allocation({"SPY": 0.05})
PART = 3.0


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"orderDefaults": GTC_MKT}


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # A working order fills in parts 3 s apart, so that a test can stop it after its first part (hold_fills).
    return {"fillDelayMs": 3000}


def ok(bus: Bus, body: dict[str, Any]) -> dict[str, Any]:
    reply = bus.reply_to(bus.publish(body), timeout=60.0)
    assert reply["status"] == "ok", reply
    return reply["result"]


def books_total(project: str, symbol: str) -> float:
    return sum(h.get(symbol, 0.0) for h in holdings(project).values())


def test_a_gtc_orders_part_filled_on_an_earlier_day_is_booked_to_it_while_it_still_works(
    consumer_factory, bus: Bus, gateway, project: str
):
    """A GTC buy fills 3 while the consumer is away, the day ends, the order still works. IB reports nothing of
    yesterday's execution, only the order (filled 3, working) and the position. The sweep made up a fill from the
    position for a finished order only (decision 44), so the 3 were in no book while the order worked, which for a
    GTC can be days: every intent trading SPY was refused books_disagree, and following its advice (reconcile with
    fix=true) put the 3 in unallocated, so that dummy's book stayed 3 short and its next allocation bought them
    again. Now the sweep books them to the order while it works (decision 66): reconcile finds no difference, and
    once the rest fills dummy holds the whole target, each execution booked once."""
    first = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    (line,) = ok(bus, SPY_TARGET)["instruments"]
    assert line["outcome"] == "working", line
    target = line["target"]
    assert target > PART
    first.stop()

    gateway.set_max_fill_size(PART)
    gateway.hold_fills(False)  # the first part fills now, the next one 3 s later
    wait_for(lambda: gateway.orders()[0]["filled"] == PART, what="the first part filled")
    gateway.hold_fills(True)  # the rest waits
    gateway.roll_day()  # a GTC order works on; IB reports nothing of yesterday's execution
    assert gateway.executions() == []
    assert gateway.positions()["SPY"] == PART

    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    found = ok(bus, {"intent": "reconcile"})
    assert found["differences"] == [], found
    (made_up,) = mode_collection(project, "fills")
    assert (made_up["orderRef"], made_up["quantity"], made_up["synthetic"]) == (line["orderRef"], PART, True)
    assert holdings(project) == {"dummy": {"SPY": PART}}
    assert [o["orderRef"] for o in mode_collection(project, "openOrders")] == [line["orderRef"]]  # still working

    gateway.set_max_fill_size(100000)
    gateway.hold_fills(False)  # the rest fills today, the consumer connected
    wait_for(lambda: gateway.orders()[0]["status"] == "Filled", what="the rest filled")
    swept = ok(bus, {"intent": "trade-reconciliation"})
    assert gateway.positions()["SPY"] == target
    assert len(gateway.orders()) == 1  # bought once
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": target}}, what="dummy's whole target booked")
    assert swept["syntheticFills"] == []
    fills = {f["execId"] for f in mode_collection(project, "fills")}
    assert fills == {e["execId"] for e in gateway.executions()} | {made_up["execId"]}  # each once
    assert mode_collection(project, "openOrders") == []
    (order,) = mode_collection(project, "orders")
    assert (order["orderRef"], order["state"], order["filled"]) == (line["orderRef"], "Filled", target)


def test_an_earlier_days_part_is_booked_though_another_client_traded_under_its_ref_today(
    consumer_factory, bus: Bus, gateway, project: str, manual
):
    """As above, and today another client id's order under the same orderRef (a person copying it in TWS) fills 2.
    Its execution carries our ref: the sweep took it for the order's own execution not booked yet, and so never
    made up the earlier day's 3 (the order's document waited on an execution that was never its). It is booked to
    unallocated, and the 3 to dummy (decisions 65, 66)."""
    from tests.service.test_overfill import copy_under

    first = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    (line,) = ok(bus, SPY_TARGET)["instruments"]
    first.stop()
    gateway.set_max_fill_size(PART)
    gateway.hold_fills(False)
    wait_for(lambda: gateway.orders()[0]["filled"] == PART, what="the first part filled")
    gateway.hold_fills(True)
    gateway.roll_day()
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 600_000)
    gateway.hold_fills(False)  # ours works on, its next part ten minutes away
    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 5)
    gateway.set_max_fill_size(100000)
    copy_under(manual, gateway, "SPY", line["orderRef"], 2)  # fills at once

    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    found = ok(bus, {"intent": "reconcile"})
    assert found["differences"] == [], found
    (ours,) = [o for o in gateway.orders() if o["orderRef"] == line["orderRef"] and o["clientId"] == 1]
    assert ours["filled"] >= PART
    assert holdings(project) == {"dummy": {"SPY": ours["filled"]}, "unallocated": {"SPY": 2.0}}
    copies = {e["execId"] for e in gateway.executions() if e["clientId"] != 1}
    fills = {f["execId"]: f for f in mode_collection(project, "fills")}
    assert copies <= set(fills)  # the copy's execution booked, by execId, to no strategy
    assert all(fills[c]["strategies"] == {"unallocated": 2.0} for c in copies)


def test_an_earlier_deployments_gtc_part_filled_on_an_earlier_day_is_booked_while_it_works(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Decision 66 across a change of IB_CLIENT_ID. The deployment on client id 2 placed dummy's GTC buy; it fills 3
    while no consumer runs, the day rolls (IB reports no execution of it any more), the order works on. The
    deployment on client id 1 finds it by orderRef/permId (reqAllOpenOrders), but decision 71 capped a working order's
    made-up part at `Gateway.filled_at_connect`, taken from `ib.openTrades()` at connect: ib_insync's start-up asks
    `reqOpenOrders`, this client id's orders only, so another client id's order counts as having filled 0 and the 3
    are never made up while it works: reconcile reports a difference (books_disagree for every SPY intent), and its
    fix puts the 3 in unallocated, leaving dummy short."""
    earlier = consumer_factory(order_timeout=3.0, ib_client_id=2)
    gateway.hold_fills(True)
    (line,) = ok(bus, allocation({"SPY": 0.05}))["instruments"]
    assert line["outcome"] == "working", line
    ref = line["orderRef"]
    earlier.stop()

    gateway.set_max_fill_size(PART)
    gateway.hold_fills(False)
    wait_for(lambda: [o["filled"] for o in gateway.orders() if o["orderRef"] == ref] == [PART], what="a part")
    gateway.hold_fills(True)
    gateway.roll_day()
    assert gateway.executions() == []
    assert gateway.positions()["SPY"] == PART
    (at_ib,) = [o for o in gateway.orders() if o["orderRef"] == ref]
    assert (at_ib["clientId"], at_ib["status"] in ("Submitted", "PreSubmitted")) == (2, True), at_ib

    consumer_factory(order_timeout=3.0, intents_subscription=another_intents_subscription(project, STANDBY))
    found = ok(bus, {"intent": "reconcile"})
    assert found["differences"] == [], found
    booked = [f for f in mode_collection(project, "fills") if f.get("orderRef") == ref]
    assert [(f["quantity"], f.get("synthetic")) for f in booked] == [(PART, True)], booked
    assert holdings(project) == {"dummy": {"SPY": PART}}


def test_a_corrected_execution_does_not_let_a_working_orders_status_only_part_be_made_up(
    consumer_factory, bus: Bus, gateway, project: str
):
    """Decision 71 caps a working order's made-up part at `filled_at_connect` plus the shares of the executions this
    connection heard and booked (`_book_unreported`, `heard`). An execution IB corrected is heard twice (".01" and
    its correction ".02", both in the order's execIds) though the books count it once (booked in place): `heard`
    sums both, so the cap is one execution too high. Our GTC buy fills 3 (heard, booked), IB corrects its price, the
    next 3 fill with the execution report lagging across IB's day roll (the case decision 71 fixed): the sweep makes
    up `synthetic-...` for those 3, and when the real execution arrives it is booked too: 9 booked for 6 filled."""
    consumer = consumer_factory(order_timeout=3.0)
    gateway.hold_fills(True)
    (line,) = ok(bus, allocation({"SPY": 0.05}))["instruments"]
    assert line["outcome"] == "working", line
    ref = line["orderRef"]

    gateway.call(setattr, gateway.server.scenario, "fillDelayMs", 600_000)  # one part, then a long pause
    gateway.set_max_fill_size(PART)
    gateway.hold_fills(False)
    wait_for(lambda: [o["filled"] for o in gateway.orders() if o["orderRef"] == ref] == [PART], what="a first part")
    gateway.hold_fills(True)
    (first,) = [e for e in gateway.executions() if e["orderRef"] == ref]
    fills = lambda: {f["execId"]: f for f in mode_collection(project, "fills")}  # noqa: E731
    wait_for(lambda: first["execId"] in fills(), what="the first part booked")
    repriced = gateway.correct_execution(first["execId"], price=first["price"] + 0.5)
    wait_for(lambda: repriced in fills(), what="the correction booked")
    assert holdings(project) == {"dummy": {"SPY": PART}}

    gateway.delay_executions(20.0)  # the next execution's report 20 s after the status that counts it
    gateway.hold_fills(False)
    wait_for(lambda: [o["filled"] for o in gateway.orders() if o["orderRef"] == ref] == [2 * PART], what="a 2nd part")
    gateway.hold_fills(True)
    (second,) = [e["execId"] for e in gateway.executions() if e["orderRef"] == ref and e["execId"] != repriced
                 and e["execId"] != first["execId"]]  # fmt: skip
    gateway.roll_day()  # the GTC buy works on; reqExecutions lists nothing of yesterday's
    assert gateway.executions() == []

    ok(bus, {"intent": "trade-reconciliation"})
    broker = consumer.service.services.broker
    wait_for(lambda: second in {f.exec_id for f in broker.session_fills()}, timeout=60, what="the lagging execution")
    ok(bus, {"intent": "trade-reconciliation"})

    (at_ib,) = [o for o in gateway.orders() if o["orderRef"] == ref]
    assert at_ib["filled"] == 2 * PART
    booked = {i: f["quantity"] for i, f in fills().items() if f.get("orderRef") == ref and not f.get("correctedBy")}
    assert sum(abs(q) for q in booked.values()) == 2 * PART, booked
    assert holdings(project) == {"dummy": {"SPY": gateway.positions()["SPY"]}}
