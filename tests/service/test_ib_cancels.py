"""Cancels that do not go as asked: an order IB cancels by itself, as IB Gateway does and ibsim does only through its
faults (the leg came to nothing for a reason only a person can act on; found by an independent review of ibsim's
realism), and a cancel of ours the exchange has not confirmed, which may still fill (found by a review of the order
lifecycle, decision 67)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bus, allocation, mode_collection, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")


# IB cancels an order it has accepted, by itself, with orderStatus Cancelled and error 202 carrying its reason: a
# limit it will not take ("Order Canceled - reason:We cannot accept an order at a limit price at or more aggressive
# than 0.33. Please submit your order using a limit price that is closer to the current market price of 0.08."),
# or "Order Canceled - reason:The order price is outside of the allowable price limits" (as client code that
# handles IB's messages quotes them). ibsim only ever sends 202 for a cancel the client asked for.
IB_CANCELS = "Order Canceled - reason:The order price is outside of the allowable price limits"


def test_a_leg_ib_cancels_by_itself_alerts_with_ibs_reason(consumer_factory, bus: Bus, gateway, manual: Any, project):
    """The allocation's buy is accepted, then IB cancels it with its reason. Nothing was bought: the target is not
    reached and only a person can tell why. The reply must alert (as for a leg IB refused, README "Messages",
    docs/contributing.md "Add an intent" 4) and carry IB's code and text: it said "cancelled", no alert, since
    ib_insync files 202 among its warnings and a 202 was read as the note on a requested cancel."""
    consumer_factory(order_timeout=30.0)
    gateway.hold_fills(True)  # accepted (Submitted), not filled
    message_id = bus.publish(allocation({"SPY": 0.05}))
    (order,) = wait_for(lambda: gateway.orders(), what="the buy at IB")
    wait_for(lambda: gateway.orders()[0]["status"] == "Submitted", what="the buy accepted")
    gateway.send_error(202, IB_CANCELS, order["orderId"])
    manual.reqGlobalCancel()  # the order Cancelled at IB, status Cancelled and 202 to its owner, as IB sends it
    wait_for(lambda: gateway.orders()[0]["status"] == "Cancelled", what="IB to cancel the buy", ib=manual)

    reply = bus.reply_to(message_id)
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert line["orderRef"] == order["orderRef"]
    assert gateway.executions() == []  # nothing bought
    assert gateway.positions().get("SPY", 0) == 0
    assert mode_collection(project, "fills") == []
    assert reply["result"].get("alert") is True, (
        f"IB cancelled the leg by itself ({IB_CANCELS!r}) and the reply says {line['outcome']!r}, "
        f"error {line.get('error')!r}, no alert: {reply['result']}"
    )
    assert line.get("error", {}).get("message") == IB_CANCELS, line


def test_an_order_we_asked_ib_to_cancel_is_not_sized_as_working(consumer_factory, bus: Bus, gateway, project):
    """A close-all asked IB to cancel dummy's working buy; the exchange has not confirmed (PendingCancel) and the
    close-all gave up (cancel_unconfirmed, dead-lettered). The next allocation, buying more SPY, counted that buy as
    working (`working: 50` in its line) and sent only the difference: once IB confirms the cancel, dummy holds
    half its target. Were the buy to fill instead, counting it would be right: which one it will be is IB's to
    say, so an instrument with an order of ours being cancelled is sized once IB has finished it (as an opposing
    order is: nothing placed, cancel_unconfirmed), never on a guess either way."""
    consumer_factory(order_timeout=1.0)
    gateway.hold_fills(True)
    (buy,) = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))["result"]["instruments"]
    assert buy["outcome"] == "working", buy
    gateway.cancel_delay(600)  # the exchange has not confirmed within the test
    gave_up = bus.reply_to(bus.publish({"intent": "close-all", "params": {"strategies": ["dummy"]}}), timeout=90)
    assert gave_up["status"] == "error", gave_up
    (pending,) = [o for o in gateway.orders() if o["orderRef"] == buy["orderRef"]]
    assert pending["status"] == "PendingCancel"

    again = bus.reply_to(bus.publish(allocation({"SPY": 0.10})), timeout=90)
    placed = [
        (o["orderRef"], o["action"], o["totalQuantity"]) for o in gateway.orders() if o["orderRef"] != buy["orderRef"]
    ]
    assert placed == [], (placed, again.get("result", {}).get("instruments") or again.get("error"))
