"""What the books claim in foreign cash against the account's balances, under IB's message order: a strategy's
short, a strategy's purchase whose fill reaches the balance before its execution reaches the books, and a
conversion whose Filled status comes before its execution. Found by an independent review of accounts and
currencies; each test failed before its fix (decisions 35, 57). Checked at the broker by orderRef and in
Firestore by execId."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tests.support import (
    Bus,
    allocation,
    holdings,
    mode_collection,
    wait_for,
)

FOREX = {"EUR.USD": {"secType": "CASH"}}
CASH_BALANCER = {"intent": "cash-balancer", "params": {"threshold": 1000}}


# -- a strategy's forex short ----------------------------------------------------------------------------------------


def eur_leg(bus: Bus, weight: float) -> dict[str, Any]:
    """dummy's allocation to `weight` of EUR.USD (a forex pair it names itself): its EUR.USD line, the reply ok."""
    params = {"strategyParams": {"dummy": {"weights": {"EUR.USD": weight}, "instruments": FOREX}}}
    reply = bus.reply_to(bus.publish(allocation({"EUR.USD": weight}, params=params)))
    assert reply["status"] == "ok", reply
    (leg,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "EUR.USD"]
    return dict(leg)


def eur_short(bus: Bus, gateway: Any, project: str) -> tuple[float, int, str]:
    """dummy sells EUR.USD (a short of about 4,900 EUR) in the built-in account, which holds 50,000 free EUR:
    (EUR before, EUR sold, the sale's orderRef), filled at the broker and booked to dummy by execId."""
    eur = gateway.cash()["EUR"]
    leg = eur_leg(bus, -0.01)
    assert (leg["outcome"], leg["order"] < 0) == ("filled", True), leg
    sold = int(-leg["order"])
    (sale,) = [o for o in gateway.orders() if o["orderRef"] == leg["orderRef"]]
    assert (sale["account"], sale["action"], sale["totalQuantity"]) == ("DU123456", "SELL", sold), sale
    executions = {e["execId"] for e in gateway.executions() if e["orderRef"] == leg["orderRef"]}
    wait_for(lambda: {f["_id"] for f in mode_collection(project, "fills")} == executions, what="the sale by execId")
    wait_for(lambda: holdings(project) == {"dummy": {"EUR.USD": -sold}}, what="dummy's short booked")
    assert gateway.cash()["EUR"] == pytest.approx(eur - sold)
    return eur, sold, leg["orderRef"]


@pytest.mark.usefixtures("paper_config")
def test_cash_balancer_converts_the_free_euros_and_leaves_a_strategys_euro_short_in_place(
    bus: Bus, gateway: Any, project: str, consumer: Any
) -> None:
    """The account holds 50,000 EUR no book claims; dummy then sells ~4,900 EUR (a short it holds in its books).
    The free cash is the 50,000: converting them leaves the account short exactly dummy's EUR, as a long stays
    long (test_trading.py). The forex rule counts a positive balance as backing no negative claim, so the
    cash-balancer converted only the ~45,100 left at the broker: the account ends flat in EUR while dummy's
    books say short, its exposure undone behind its books (and its P&L no longer the account's)."""
    eur, sold, _ = eur_short(bus, gateway, project)

    balanced = bus.reply_to(bus.publish(CASH_BALANCER))
    assert balanced["status"] == "ok", balanced
    (line,) = [b for b in balanced["result"]["balances"] if b["currency"] == "EUR"]
    converted = [o for o in gateway.orders() if o["orderRef"] == line.get("orderRef")]
    executions = {e["execId"] for e in gateway.executions() if e["orderRef"] == line.get("orderRef")}
    wait_for(lambda: executions <= {f["_id"] for f in mode_collection(project, "fills")}, what="booked by execId")
    assert holdings(project) == {"dummy": {"EUR.USD": -sold}}
    assert gateway.cash()["EUR"] == pytest.approx(-sold, abs=1.0), (
        f"dummy is short {sold} EUR in its books, but the account now holds {gateway.cash()['EUR']:.2f} EUR: the "
        f"cash-balancer converted {[(o['action'], o['totalQuantity']) for o in converted]} of the {eur:.0f} free "
        f"EUR (its line: balance {line['balance']}, claimed {line['claimed']}, order {line.get('order')})"
    )
    assert [(o["action"], o["totalQuantity"]) for o in converted] == [("SELL", math.trunc(eur))]


@pytest.mark.usefixtures("paper_config")
def test_reconcile_finds_a_strategys_euro_short_consistent_and_fix_books_nothing(
    bus: Bus, gateway: Any, project: str, consumer: Any
) -> None:
    """Right after dummy's EUR short is booked (the sale by execId), the books and the broker agree: 50,000 free EUR
    less the ~4,900 dummy sold. Reconcile reported a difference of the whole short, and `fix` booked that many EUR
    to unallocated, a holding nobody has (a close-all with includeUnallocated would sell it)."""
    _, sold, _ = eur_short(bus, gateway, project)

    checked = bus.reply_to(bus.publish({"intent": "reconcile", "params": {"fix": True}}))
    assert checked["status"] == "ok", checked
    result = checked["result"]
    assert (result["consistent"], result["differences"], result["fixed"]) == (True, [], []), json.dumps(result)
    assert holdings(project) == {"dummy": {"EUR.USD": -sold}}


@pytest.fixture
def consumer(consumer_factory: Any) -> Any:
    """Waiting 3 s, not 30, for a market order to finish before reporting it working (its fills held)."""
    return consumer_factory(order_timeout=3.0)


def open_orders_asked(gateway: Any) -> int:
    return sum(1 for _, name in gateway.requests_received() if name == "reqAllOpenOrders")


def strategy_fx_fill_during_cash_balancer(
    bus: Bus, gateway: Any, weight: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """dummy's EUR.USD order to `weight` works (fills held) when a cash-balancer starts, then fills while the
    cash-balancer asks IB for the working orders, its execution report 3 s behind its status and the account
    values: (dummy's leg, the cash-balancer's EUR line)."""
    gateway.hold_fills(True)
    leg = eur_leg(bus, weight)
    assert (leg["outcome"], leg["order"] > 0) == ("working", weight > 0), leg

    gateway.delay_executions(3.0)  # the execution's report trails the Filled status and the account values
    asked = open_orders_asked(gateway)
    gateway.stall_request("reqAllOpenOrders", 1.0)
    balancing = bus.publish(CASH_BALANCER)
    wait_for(lambda: open_orders_asked(gateway) > asked, what="the cash-balancer to ask for the working orders",
             interval=0.005)  # fmt: skip
    gateway.hold_fills(False)  # dummy's order fills while IB answers
    balanced = bus.reply_to(balancing)
    assert balanced["status"] == "ok", balanced
    (line,) = [b for b in balanced["result"]["balances"] if b["currency"] == "EUR"]
    return leg, line


@pytest.mark.usefixtures("paper_config")
def test_a_strategys_forex_buy_filling_while_cash_balancer_reads_is_not_converted_back(
    bus: Bus, gateway: Any, project: str, consumer: Any
) -> None:
    """dummy's BUY EUR.USD is working (fills held) when a cash-balancer starts; it fills while the cash-balancer
    asks IB for the working orders, and IB's execution report trails the order's status and the account values
    (IB promises no order among them: decision 34, ibsim's delay_executions). The cash-balancer read the books'
    claims before the fill was booked and the balances after IB's values counted it, and asked no execution: the
    euros dummy had just bought were free cash to it and sold, dummy's long undone behind its books."""
    eur = gateway.cash()["EUR"]
    leg, line = strategy_fx_fill_during_cash_balancer(bus, gateway, 0.05)
    bought = int(leg["order"])

    executions = {e["execId"] for e in gateway.executions() if e["orderRef"] in (leg["orderRef"], line.get("orderRef"))}
    wait_for(lambda: executions <= {f["_id"] for f in mode_collection(project, "fills")}, what="booked by execId")
    wait_for(lambda: holdings(project) == {"dummy": {"EUR.USD": bought}}, what="dummy's buy booked")
    conversions = [(o["action"], o["totalQuantity"]) for o in gateway.orders() if o["orderRef"] == line.get("orderRef")]
    assert gateway.cash()["EUR"] == pytest.approx(bought, abs=1.0), (
        f"dummy holds {bought} EUR in its books, the account {gateway.cash()['EUR']:.2f}: of {eur:.0f} free EUR the "
        f"cash-balancer converted {conversions} (its line: cashBalance {line['cashBalance']}, claimed "
        f"{line['claimed']}, order {line.get('order')})"
    )


@pytest.mark.usefixtures("paper_config")
@pytest.mark.parametrize(
    ("lag_ms", "answered_in"), [(2500.0, 1.0), (200.0, 0.15)], ids=["account-lag-2.5s", "account-lag-200ms"]
)
def test_a_conversion_whose_execution_report_trails_its_status_is_not_sold_again_by_a_second_cash_balancer(
    bus: Bus, gateway: Any, project: str, consumer: Any, lag_ms: float, answered_in: float
) -> None:
    """Decision 35 (amended): a second cash-balancer reads IB's working orders, then waits for IB's account values
    to count every fill so far before it reads the balances (test_trading.py: values 2.5 s behind the fill). The
    wait knows a fill from its execution report alone; IB sends the order's status and the report in no promised
    order (decision 34, ibsim's delay_executions). The first conversion fills while IB lists the working orders,
    its Filled status at once, its report 3 s later, the account values 2.5 s later: no longer working, not yet in
    the balance, not waited for. The same euros were sold a second time. With ibsim's default 200 ms lag of the
    values too, the fill landing in the last 150 ms of IB's open-orders answer (as test_trading.py has it)."""
    eur = gateway.cash()["EUR"]
    sold = math.trunc(eur)
    gateway.hold_fills(True)
    first = bus.reply_to(bus.publish(CASH_BALANCER))
    (line,) = [b for b in first["result"]["balances"] if b["currency"] == "EUR"]
    assert (line["action"], line["order"], line["outcome"]) == ("convert", -sold, "working"), line
    ref = line["orderRef"]

    gateway.call(setattr, gateway.server.scenario, "accountAfterFillMs", lag_ms)
    gateway.delay_executions(3.0)  # the execution's report trails the Filled status
    asked = open_orders_asked(gateway)
    gateway.stall_request("reqAllOpenOrders", answered_in)
    second_id = bus.publish(CASH_BALANCER)
    wait_for(lambda: open_orders_asked(gateway) > asked, what="the second run to ask IB for its working orders",
             interval=0.005)  # fmt: skip
    gateway.hold_fills(False)  # the first conversion fills while IB answers
    second = bus.reply_to(second_id)
    assert second["status"] == "ok", second
    (again,) = [b for b in second["result"]["balances"] if b["currency"] == "EUR"]
    executions = {e["execId"] for e in gateway.executions()}
    wait_for(lambda: executions <= {f["_id"] for f in mode_collection(project, "fills")}, what="booked by execId")

    sales = [(o["orderRef"], o["action"], o["totalQuantity"], o["status"]) for o in gateway.orders()]
    assert [o["orderRef"] for o in gateway.orders()] == [ref], (
        f"the euros were sold twice: orders {sales}, EUR now {gateway.cash()['EUR']:.2f}; the second run's line: "
        f"cashBalance {again['cashBalance']}, action {again['action']}, order {again.get('order')}"
    )
    assert gateway.cash()["EUR"] == pytest.approx(eur - sold)


def _booked(project: str, gateway: Any, refs: set[str]) -> None:
    executions = {e["execId"] for e in gateway.executions() if e["orderRef"] in refs}
    wait_for(lambda: executions <= {f["_id"] for f in mode_collection(project, "fills")}, what="booked by execId")


@pytest.mark.usefixtures("paper_config")
def test_cash_balancer_does_not_buy_euros_for_a_short_whose_cover_is_still_working(
    bus: Bus, gateway: Any, project: str, consumer: Any
) -> None:
    """No free EUR in the account (a first cash-balancer converts them). dummy sells ~4,900 EUR.USD (a short in its
    books: the account's EUR balance is that short, nothing is free), then its allocation to 0 buys them back, and
    that purchase is still working (fills held) when a cash-balancer runs. Decision 57 reserves the open purchase's
    EUR as a long claim; summed with dummy's short claim the books claim 0, so the whole negative balance reads as
    free cash owed, and the cash-balancer BUYS ~4,900 EUR: once dummy's cover fills the account holds them with no
    claim (the next run sells them back: two conversions of nothing, an exposure nobody asked for between them).
    "Less is converted, never more" (decision 57) is broken: the reserve turned a line that is flat into a debit."""
    first = bus.reply_to(bus.publish(CASH_BALANCER))
    assert first["status"] == "ok", first
    _booked(project, gateway, {b.get("orderRef", "") for b in first["result"]["balances"]})
    free = gateway.cash()["EUR"]
    assert abs(free) < 1.0, free

    leg = eur_leg(bus, -0.01)
    assert (leg["outcome"], leg["order"] < 0) == ("filled", True), leg
    sold = int(-leg["order"])
    _booked(project, gateway, {leg["orderRef"]})
    wait_for(lambda: holdings(project) == {"dummy": {"EUR.USD": -sold}}, what="dummy's short booked")

    gateway.hold_fills(True)
    leg = eur_leg(bus, 0.0)
    assert (leg["outcome"], leg["order"]) == ("working", sold), leg
    (buy,) = [o for o in gateway.orders() if o["orderRef"] == leg["orderRef"]]
    assert (buy["action"], buy["totalQuantity"]) == ("BUY", sold), buy

    balanced = bus.reply_to(bus.publish(CASH_BALANCER))
    assert balanced["status"] == "ok", balanced
    (line,) = [b for b in balanced["result"]["balances"] if b["currency"] == "EUR"]
    conversions = [(o["action"], o["totalQuantity"]) for o in gateway.orders() if o["orderRef"] == line.get("orderRef")]
    gateway.hold_fills(False)
    _booked(project, gateway, {leg["orderRef"], line.get("orderRef", "")})
    wait_for(lambda: holdings(project) == {}, what="dummy's cover booked")
    assert conversions == [], (
        f"dummy is short {sold} EUR in its books and buying them back; the account holds {free:.2f} free EUR, but "
        f"the cash-balancer placed {conversions} (its line: cashBalance {line['cashBalance']}, claimed "
        f"{line['claimed']}, balance {line['balance']}, action {line['action']}); the account now holds "
        f"{gateway.cash()['EUR']:.2f} EUR no book claims"
    )
    assert math.isclose(gateway.cash()["EUR"], free, abs_tol=1.0)


@pytest.mark.usefixtures("paper_config")
def test_a_strategys_forex_sale_filling_while_cash_balancer_reads_is_not_bought_back(
    bus: Bus, gateway: Any, project: str, consumer: Any
) -> None:
    """The mirror of test_cash_claims.py's purchase (decision 57), which the fix leaves out on purpose ("what it
    would take from a claim is not counted: less is converted, never more"). No free EUR (a first cash-balancer
    converts them); dummy's SELL EUR.USD (a short) is working (fills held) when a cash-balancer starts, and fills
    while it asks IB for the working orders, its execution report 3 s behind its status and the account values.
    The books still claim nothing, the balance is already -4,900: read as a debit of free cash, and the
    cash-balancer BUYS the euros dummy just sold, its short undone behind its books. Not counting the sale is not
    "less converted": it is a conversion the other way."""
    first = bus.reply_to(bus.publish(CASH_BALANCER))
    assert first["status"] == "ok", first
    _booked(project, gateway, {b.get("orderRef", "") for b in first["result"]["balances"]})
    free = gateway.cash()["EUR"]
    assert abs(free) < 1.0, free

    leg, line = strategy_fx_fill_during_cash_balancer(bus, gateway, -0.01)
    sold = int(-leg["order"])

    _booked(project, gateway, {leg["orderRef"], line.get("orderRef", "")})
    wait_for(lambda: holdings(project) == {"dummy": {"EUR.USD": -sold}}, what="dummy's sale booked")
    conversions = [(o["action"], o["totalQuantity"]) for o in gateway.orders() if o["orderRef"] == line.get("orderRef")]
    assert gateway.cash()["EUR"] == pytest.approx(-sold, abs=1.0), (
        f"dummy is short {sold} EUR in its books, the account holds {gateway.cash()['EUR']:.2f}: with {free:.2f} free "
        f"EUR the cash-balancer converted {conversions} (its line: cashBalance {line['cashBalance']}, claimed "
        f"{line['claimed']}, action {line['action']}, order {line.get('order')})"
    )
