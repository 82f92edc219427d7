"""A commission IB reports after its execution, for an execution the connection already held: found by an
independent review of trade-reconciliation; the test failed before, for the reason its docstring gives."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Bus, mode_document, wait_for

pytestmark = pytest.mark.usefixtures("paper_config")


def test_a_commission_ib_reports_late_for_another_clients_execution_is_booked_by_the_next_sweep(
    bus: Bus, gateway: Any, consumer: Any, manual: Any, project: str
):
    """Another API client of the login (TWS, a script: client 7) buys 10 SPY; IB reports the execution with
    its commission report late (held). trade-reconciliation books the execution to `unallocated` without a
    commission, as it should. The commission report then comes; the next trade-reconciliation asks IB for the
    day's executions, and IB sends the execution with its commission report. Expected: `commissionsAdded` names
    the execution and its fill document carries IB's commission. It was: `commissionsAdded` was [] and the fill
    kept commission None on every later sweep: the books never count the commission (realized P&L and
    eod-check's commissions short of IB's), while the reply says nothing is missing.

    Root cause: consumer/bookkeeper.py Bookkeeper.reconcile builds `fills` from `[*session_fills, *reported]`, the
    executions `reqExecutions` returned winning. ib_insync's Wrapper.execDetails returns, for an execId it already
    holds, a new Fill with an empty CommissionReport, and files IB's commission report that follows on the Fill it
    already held (Wrapper.commissionReport), so every execution the connection saw before comes back from
    reqExecutions without its commission; and since the trade is not this client's, no commissionReportEvent
    reaches the live booking either. Now consumer/broker/broker.py Broker.executions takes a fresh copy's missing
    commission from the copy ib_insync filed it on (decision 74)."""
    from ib_insync import MarketOrder, Stock

    gateway.hold_commissions(True)
    spy = manual.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    manual.placeOrder(spy, MarketOrder("BUY", 10))
    wait_for(lambda: len(gateway.executions()) == 1, what="the manual order filled")
    (execution,) = gateway.executions()
    exec_id = execution["execId"]

    first = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert first["status"] == "ok", first
    assert [f["execId"] for f in first["result"]["fillsApplied"]] == [exec_id], first

    gateway.hold_commissions(False)
    wait_for(lambda: gateway.executions()[0]["commission"], what="IB's commission")
    commission = gateway.executions()[0]["commission"]
    second = bus.reply_to(bus.publish({"intent": "trade-reconciliation"}))
    assert second["status"] == "ok", second
    fill = mode_document(project).collection("fills").document(exec_id).get().to_dict()
    assert (second["result"]["commissionsAdded"], fill["commission"]) == ([exec_id], commission), second["result"]
