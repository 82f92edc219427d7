"""A sale that would go short in a stock IB has no shares to borrow (an instrument's `shortable: false`): IB holds it
PreSubmitted, with whyHeld "locate" and warning 404 "Order held while securities are located.", until shares are
located (here: never); a sale within the position fills as usual."""

from __future__ import annotations

import pytest
from ib_insync import IB, MarketOrder, Stock

from ibsim import ThreadedGateway
from tests.ibsim.conftest import wait_until

HTB = Stock("HTB", "SMART", "USD")
LOCATING = (404, "Order held while securities are located.")


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    return {
        "accounts": [
            {
                "id": "DU123456",
                "baseCurrency": "USD",
                "cash": {"USD": 1_000_000},
                "positions": [{"symbol": "HTB", "quantity": 10}],
            }
        ],
        "instruments": [
            {"symbol": "HTB", "secType": "STK", "primaryExchange": "NASDAQ", "price": 50.0, "shortable": False},
        ],
    }


def test_a_sale_past_the_position_is_held_for_a_locate_and_one_within_it_fills(gw: ThreadedGateway, ib: IB) -> None:
    warnings: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: warnings.append((req_id, code, msg))

    short = ib.placeOrder(HTB, MarketOrder("SELL", 15, orderRef="goes-short"))
    wait_until(ib, lambda: warnings, what="IB's 404")
    assert warnings == [(short.order.orderId, *LOCATING)]
    assert (short.orderStatus.status, short.orderStatus.whyHeld) == ("PreSubmitted", "locate")
    gw.set_price("HTB", 49.0)  # a market that moves fills nothing held for a locate
    ib.reqOpenOrders()  # a round trip: a fill would have come before its answer
    assert gw.executions() == []
    assert gw.positions()["HTB"] == 10

    within = ib.placeOrder(HTB, MarketOrder("SELL", 10, orderRef="within"))
    wait_until(ib, within.isDone, what="the sale within the position to fill")
    assert within.orderStatus.status == "Filled"
    assert gw.positions().get("HTB", 0) == 0
    ((held,),) = [[o for o in gw.orders() if o["orderRef"] == "goes-short"]]
    assert (held["status"], held["filled"]) == ("PreSubmitted", 0)

    ib.cancelOrder(short.order)
    wait_until(ib, short.isDone, what="the held sale cancelled")
    assert short.orderStatus.status == "Cancelled"
