"""Account-summary subscriptions: IB keeps two active per client; a third is refused with 322 until one is
cancelled. ib_insync's accountSummary subscribes on its first call and never cancels."""

from __future__ import annotations

from collections.abc import Callable

from ib_insync import IB, MarketOrder, Stock

from ibsim import ThreadedGateway
from tests.ibsim.conftest import wait_until

EXCEEDED = (322, "Maximum number of account summary requests exceeded; desubscribe to previous request first")
TAGS = "NetLiquidation"


def refusals_of(ib: IB) -> list[tuple[int, int, str]]:
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((req_id, code, msg))
    return seen


def subscribe(ib: IB, req_id: int) -> None:
    ib.client.reqAccountSummary(req_id, "All", TAGS)
    ib.reqPositions()  # a round trip: an answer or a refusal to the subscription has arrived before this one's end


def test_a_third_subscription_of_a_client_is_refused_until_one_is_cancelled(connect: Callable[..., IB]) -> None:
    ib, other = connect(1), connect(2)
    refused, other_refused = refusals_of(ib), refusals_of(other)
    subscribe(ib, 9001)
    subscribe(ib, 9002)
    assert refused == []
    assert any(v.tag == "NetLiquidation" for v in ib.wrapper.acctSummary.values())

    subscribe(ib, 9003)
    assert refused == [(9003, *EXCEEDED)]
    subscribe(other, 9001)  # another client has two of its own
    assert other_refused == []

    ib.client.cancelAccountSummary(9001)
    subscribe(ib, 9004)
    assert refused == [(9003, *EXCEEDED)]


def test_a_subscription_hears_what_changed_at_the_intervals_next_tick_only(gw: ThreadedGateway, ib: IB) -> None:
    """IB: "every three minutes those values which have changed will be returned", a fill's too; the account
    window (reqAccountUpdates) has the fill's values at once."""
    values = ib.accountSummary()  # subscribes
    cash = {v.currency: float(v.value) for v in values if v.tag == "TotalCashValue"}
    trade = ib.placeOrder(Stock("MSFT", "SMART", "USD"), MarketOrder("BUY", 100))
    wait_until(ib, trade.isDone, what="fill")
    wait_until(ib, lambda: len(ib.portfolio()) == 1, what="the account window's update after the fill")
    ib.reqCurrentTime()  # a round trip: anything the gateway sent with the update has arrived
    now = {v.currency: float(v.value) for v in ib.accountSummary() if v.tag == "TotalCashValue"}
    assert now == cash  # not yet in the summary subscription

    gw.advance_time(180)  # past the interval's tick
    wait_until(
        ib,
        lambda: {v.currency: float(v.value) for v in ib.accountSummary() if v.tag == "TotalCashValue"} != cash,
        what="the summary subscription's update at the tick",
    )
    window = {v.currency: float(v.value) for v in ib.accountValues() if v.tag == "TotalCashValue"}
    updated = {v.currency: float(v.value) for v in ib.accountSummary() if v.tag == "TotalCashValue"}
    assert updated["USD"] == window["USD"] < cash["USD"]
