"""Many accounts, many gateways, one topic (issue 18): each message is acted on once, by the right deployment.

Two deployments on one emulator, each with its own subscription to the intents topic (the emulator ignores
subscription filters, so each sees every message, as a filter-less cloud setup would):
    paper-solo   gateway A, login with one account (DU111111)     the default deployment, subscription intents-consumer
    household    gateway B, login managing DU222222 and DU333333  subscription intents-household

The household login reports both its accounts' positions, executions and orders on one connection, and ib_insync
holds the portfolio (IB's marks) of the first only: the tests on its second account check that each intent acts
on, and books into, the addressed account alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DEFAULT_CLOCK,
    NOT_SUBSCRIBED,
    QUIET,
    STREAM_RESTART_WAIT,
    Bus,
    ConsumerUnderTest,
    account_document,
    activity,
    allocation,
    another_intents_subscription,
    clock_seen,
    ensure_loop,
    holdings,
    mode_collection,
    wait_for,
    write_config,
)

SOLO = "DU111111"
HOUSEHOLD = ("DU222222", "DU333333")
ACCOUNTS = (SOLO, *HOUSEHOLD)
ALIASES = {SOLO: "solo", HOUSEHOLD[0]: "parent", HOUSEHOLD[1]: "child"}
HOUSEHOLD_SUBSCRIPTION = "intents-household"
# Where the household comes back: after a consumer stops, the emulator can hand messages to its closed stream for
# minutes (tests/support.py another_intents_subscription), so the restarted one pulls from a subscription of its own
# made before the messages, holding its own copy of each, as the cloud's redelivery would.
HOUSEHOLD_BACK = "intents-household-back"
# The count (100 mixed messages for three accounts); TEST_ACCOUNT_MESSAGES changes it.
MESSAGE_COUNT = int(os.environ.get("TEST_ACCOUNT_MESSAGES", "100"))
# One allocation per account, each to its own weight, so a trade booked in the wrong books shows.
WEIGHTS = {SOLO: 0.01, HOUSEHOLD[0]: 0.02, HOUSEHOLD[1]: 0.03}


# And its own cash: the household's second account sized from the login's first (or the other login's) account
# would show in its order and in the net liquidation its reply reports.
CASH = {SOLO: 1_000_000, HOUSEHOLD[0]: 800_000, HOUSEHOLD[1]: 600_000}


def scenario_accounts(*ids: str) -> list[dict[str, Any]]:
    return [{"id": a, "baseCurrency": "USD", "cash": {"USD": CASH[a]}, "positions": []} for a in ids]


@pytest.fixture
def gateways() -> Iterator[tuple[Any, Any]]:
    from ibsim import Scenario, ThreadedGateway

    clock = {"clock": {"start": DEFAULT_CLOCK}}
    with (
        ThreadedGateway(port=0, scenario=Scenario.from_dict({"accounts": scenario_accounts(SOLO), **clock})) as a,
        ThreadedGateway(port=0, scenario=Scenario.from_dict({"accounts": scenario_accounts(*HOUSEHOLD), **clock})) as b,
    ):
        yield a, b


@pytest.fixture
def accounts_file(tmp_path: Path) -> str:
    path = tmp_path / "accounts.yaml"
    lines = ["accounts:", *(f"  {a}: {{aliases: [{alias}]}}" for a, alias in ALIASES.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class Fleet:
    """The two deployments; `start_household` (re)starts the second one on its own subscription."""

    def __init__(self, project: str, gateways: tuple[Any, Any], accounts_file: str) -> None:
        self.project = project
        self.gateways = gateways
        self.accounts_file = accounts_file
        self.started: list[ConsumerUnderTest] = []
        self.solo = self._start(gateways[0], (SOLO,), default=True, subscription="intents-consumer")
        self.household = self.start_household()

    def start_household(self, subscription: str = HOUSEHOLD_SUBSCRIPTION) -> ConsumerUnderTest:
        self.household = self._start(self.gateways[1], HOUSEHOLD, default=False, subscription=subscription)
        return self.household

    def _start(self, gateway: Any, accounts: tuple[str, ...], default: bool, subscription: str) -> ConsumerUnderTest:
        consumer = ConsumerUnderTest.start(
            self.project,
            gateway.port,
            ib_account="",
            ib_accounts=accounts,
            accounts_file=self.accounts_file,
            default_deployment=default,
            intents_subscription=subscription,
            order_timeout=5.0,
        )
        self.started.append(consumer)
        return consumer

    def stop(self) -> None:
        for consumer in self.started:
            consumer.stop()


@pytest.fixture
def fleet(project: str, bus: Bus, gateways: tuple[Any, Any], accounts_file: str) -> Iterator[Fleet]:
    # Before the first message, so that each gets its copy of every one.
    another_intents_subscription(project, HOUSEHOLD_SUBSCRIPTION)
    another_intents_subscription(project, HOUSEHOLD_BACK)
    for account in ACCOUNTS:
        write_config(project, account=account)
    fleet = Fleet(project, gateways, accounts_file)
    try:
        yield fleet
    finally:
        fleet.stop()


def booked_fills(project: str, account: str) -> set[str]:
    """The execIds booked in the account's fills."""
    return {f["_id"] for f in mode_collection(project, "fills", account=account)}


def working_limit_order(gateway: Any, account: str) -> None:
    """A limit order far below the market, left working in `account` by another client (as a person in TWS)."""
    from ib_insync import IB, LimitOrder, Stock

    ensure_loop()
    other = IB()
    other.connect("127.0.0.1", gateway.port, clientId=9, timeout=10)
    try:
        other.placeOrder(Stock("SPY", "SMART", "USD"), LimitOrder("BUY", 1, 100.0, account=account, orderRef="by-hand"))
        wait_for(lambda: any(o["orderRef"] == "by-hand" for o in gateway.orders()), what="the order by hand working")
    finally:
        other.disconnect()


def spy_bought(bus: Bus, project: str, account: str, weight: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """An allocation of dummy to `weight` in SPY for `account` (flat before), filled and booked: the reply's result
    and its SPY line."""
    reply = bus.reply_to(bus.publish(allocation({"SPY": weight}), account=account))
    assert reply["status"] == "ok", reply
    result = reply["result"]
    (line,) = [i for i in result["instruments"] if i["instrument"] == "SPY"]
    assert line["outcome"] == "filled", line
    wait_for(lambda: holdings(project, account=account) == {"dummy": {"SPY": line["order"]}},
             what=f"{account}'s fill booked")  # fmt: skip
    return result, line


def gateway_of(fleet: Fleet, account: str) -> Any:
    return fleet.gateways[0] if account == SOLO else fleet.gateways[1]


def mixed_messages(count: int) -> list[tuple[str | None, dict[str, Any], dict[str, str]]]:
    """(account expected to answer, body, attributes): read-only intents addressed by id, by alias (the attribute
    for the default's account, which alone answers aliases; the body for the others'), in the body too, and
    unaddressed (the default deployment serves one account, so it runs there)."""
    out: list[tuple[str | None, dict[str, Any], dict[str, str]]] = []
    for n in range(count):
        account = ACCOUNTS[n % 3]
        intent = "summary" if n % 2 else "ping"
        match n % 5:
            case 0:
                out.append((account, {"intent": intent}, {"account": account}))
            case 1 if account == SOLO:
                out.append((account, {"intent": intent}, {"account": ALIASES[account]}))
            case 1:
                out.append((account, {"intent": intent, "account": ALIASES[account]}, {"account": account}))
            case 2:
                out.append((account, {"intent": intent, "account": account}, {"account": account}))
            case 3:
                out.append((SOLO, {"intent": intent}, {}))
            case _:
                out.append((account, {"intent": intent, "tradingMode": "paper"}, {"account": account}))
    return out


def only_reply(bus: Bus, message_id: str) -> dict[str, Any]:
    (reply,) = bus.replies_to(message_id)
    return reply


def test_a_mix_of_messages_for_three_accounts_is_answered_once_each_by_the_right_deployment(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    sent: dict[str, str | None] = {}
    for account, body, attributes in mixed_messages(MESSAGE_COUNT):
        sent[bus.publish(body, **attributes)] = account
    trades = {account: bus.publish(allocation({"SPY": WEIGHTS[account]}), account=account) for account in ACCOUNTS}
    unknown = bus.publish({"intent": "ping"}, account="U999999")

    replies = bus.replies_to_all([*sent, *trades.values(), unknown], timeout=180)
    assert {m: len(r) for m, r in replies.items() if len(r) != 1} == {}, "each message gets exactly one reply"
    for message_id, account in sent.items():
        (reply,) = replies[message_id]
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        if reply["intent"] == "summary":
            # The summary is the gateway's view: the household login reports both of its accounts, the solo one.
            reported = set(reply["result"]["accounts"])
            assert reported == ({SOLO} if account == SOLO else set(HOUSEHOLD)), reply
    (refused,) = replies[unknown]
    assert (refused["status"], refused["error"]["code"], refused["account"]) == ("error", "unknown_account", SOLO)

    for account, message_id in trades.items():
        (reply,) = replies[message_id]
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        # Sized from this account's own values (no position yet: its net liquidation is its cash).
        assert (reply["result"]["account"], reply["result"]["netLiquidation"]) == (account, CASH[account]), reply
        (line,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
        assert line["order"] > 0, line
        assert line["outcome"] == "filled", line
        # At the broker: the order, by its orderRef, went to this account and only once.
        gateway = gateway_of(fleet, account)
        at_broker = [o for o in gateway.orders() if o["orderRef"] == line["orderRef"]]
        assert [(o["account"], o["totalQuantity"]) for o in at_broker] == [(account, line["order"])]
        fills = [e for e in gateway.executions() if e["orderRef"] == line["orderRef"]]
        assert {e["account"] for e in fills} == {account}
        assert sum(e["shares"] for e in fills) == line["order"]
        assert gateway.positions(account) == {"SPY": line["order"]}
        # In Firestore: booked in this account's books by execId, and in no other account's.
        wait_for(lambda a=account, q=line["order"]: holdings(project, account=a) == {"dummy": {"SPY": q}},
                 what=f"the fill booked in {account}'s books")  # fmt: skip
        booked = booked_fills(project, account)
        assert booked == {e["execId"] for e in fills}
        for other in set(ACCOUNTS) - {account}:
            assert not booked_fills(project, other) & booked

    # Every run is recorded once, in the activity of the account that ran it.
    expected = Counter(a for a in sent.values() if a is not None) + Counter(ACCOUNTS)
    expected[SOLO] += 1  # the unknown-account refusal, recorded by the default deployment
    wait_for(
        lambda: {a: len(activity(project, account=a)) for a in ACCOUNTS} == dict(expected),
        what="one activity record per message, in the answering account",
    )


@pytest.mark.slow(seconds=20)
def test_the_other_deployment_serves_on_while_one_is_down_and_its_messages_wait_for_it(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    fleet.household.stop()
    waiting = {bus.publish({"intent": "ping"}, account=a): a for a in (*HOUSEHOLD, *HOUSEHOLD)}
    served = {bus.publish({"intent": "ping"}, account=SOLO): SOLO for _ in range(3)}

    replies = bus.replies_to_all(list(served))
    assert all(len(r) == 1 and r[0]["account"] == SOLO for r in replies.values()), replies
    bus.settle(QUIET * 3)
    taken = [r for r in bus.received if r["messageId"] in waiting]
    assert taken == [], "the solo deployment must not answer the household's messages"

    fleet.start_household(HOUSEHOLD_BACK)
    back = bus.replies_to_all(list(waiting), timeout=STREAM_RESTART_WAIT)
    assert {m: [(r["status"], r["account"]) for r in rs] for m, rs in back.items()} == {
        m: [("ok", a)] for m, a in waiting.items()
    }


def test_the_same_scheduled_slot_runs_once_per_account(fleet: Fleet, bus: Bus, project: str) -> None:
    """The idempotency key is scoped by account: one key, three accounts, three runs; again, three duplicates."""
    key = "schedule:daily-summary:2026-06-17"
    first = {bus.publish({"intent": "summary", "idempotencyKey": key}, account=a): a for a in ACCOUNTS}
    again = {bus.publish({"intent": "summary", "idempotencyKey": key}, account=a): a for a in ACCOUNTS}
    replies = bus.replies_to_all([*first, *again])
    for message_id, account in first.items():
        (reply,) = replies[message_id]
        assert (reply["status"], reply["account"], reply.get("duplicate")) == ("ok", account, None), reply
    for message_id, account in again.items():
        (reply,) = replies[message_id]
        assert (reply["account"], reply.get("duplicate")) == (account, True), reply
    for account in ACCOUNTS:
        assert len(mode_collection(project, "requests", account=account)) == 1


def test_cash_balancer_converts_the_addressed_accounts_own_cash_on_a_login_with_two(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """The household login's two accounts both hold EUR; a cash-balancer addressed to one converts that account's
    balance, in that account, and leaves the other's alone (its values come from ib_insync's per-account updates,
    not the login's first account). Both in turn, so that reading either account's balance for the other fails."""
    household = fleet.gateways[1]
    balances = dict(zip(HOUSEHOLD, (20_000, 50_000), strict=True))
    for account, eur in balances.items():
        household.set_cash("EUR", eur, account=account)
    converted: set[str] = set()
    for account in reversed(HOUSEHOLD):
        reply = bus.reply_to(bus.publish({"intent": "cash-balancer", "params": {"threshold": 1000}}, account=account))
        assert (reply["status"], reply["account"], reply["result"]["account"]) == ("ok", account, account), reply
        (line,) = [b for b in reply["result"]["balances"] if b["currency"] == "EUR"]
        eur = balances[account]
        assert (line["cashBalance"], line["action"], line.get("order")) == (eur, "convert", -eur), line
        # At the broker, by orderRef: one sale of this account's EUR, in this account.
        (order,) = [o for o in household.orders() if o["orderRef"] == line["orderRef"]]
        assert (order["account"], order["action"], order["totalQuantity"]) == (account, "SELL", eur), order
        fills = [e for e in household.executions() if e["orderRef"] == line["orderRef"]]
        assert {e["account"] for e in fills} == {account}
        assert sum(e["shares"] for e in fills) == eur
        converted.add(account)
        for other in HOUSEHOLD:
            expected = 0.0 if other in converted else balances[other]
            assert household.cash(other)["EUR"] == pytest.approx(expected), other
        # In Firestore, by execId: booked in this account's fills, and in no other account's.
        wait_for(
            lambda a=account, ids={e["execId"] for e in fills}: booked_fills(project, a) == ids,
            what=f"the conversion booked in {account}",
        )
        for other in set(ACCOUNTS) - converted:
            assert mode_collection(project, "fills", account=other) == []


def test_close_all_on_a_login_with_two_accounts_flattens_only_the_addressed_one(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """Both household accounts hold SPY (each its own size); close-all addressed to the second sells exactly the
    second's position, in the second account, and leaves the first's position and books as they were."""
    household = fleet.gateways[1]
    first, second = HOUSEHOLD
    bought: dict[str, float] = {}
    for account in HOUSEHOLD:
        bought[account] = spy_bought(bus, project, account, WEIGHTS[account])[1]["order"]
    assert bought[first] != bought[second]
    first_fills = booked_fills(project, first)
    working_limit_order(household, first)  # another client's SPY order, in the first account

    closed = bus.reply_to(bus.publish({"intent": "close-all"}, account=second))
    assert (closed["status"], closed["account"]) == ("ok", second), closed
    assert closed["result"]["kept"] == [], "the first account's order is none of the second's business"
    (leg,) = [i for i in closed["result"]["instruments"] if i["instrument"] == "SPY"]
    assert (leg["order"], leg["outcome"]) == (-bought[second], "filled"), leg
    (sale,) = [o for o in household.orders() if o["orderRef"] == leg["orderRef"]]
    assert (sale["account"], sale["action"], sale["totalQuantity"]) == (second, "SELL", bought[second]), sale
    fills = [e for e in household.executions() if e["orderRef"] == leg["orderRef"]]
    assert {e["account"] for e in fills} == {second}
    assert household.positions(second).get("SPY", 0) == 0
    assert household.positions(first) == {"SPY": bought[first]}
    assert [o["status"] for o in household.orders() if o["orderRef"] == "by-hand"] == ["Submitted"]
    wait_for(lambda: holdings(project, account=second) == {}, what="the second account's books flat")
    assert {e["execId"] for e in fills} <= booked_fills(project, second)
    assert holdings(project, account=first) == {"dummy": {"SPY": bought[first]}}
    assert booked_fills(project, first) == first_fills


def test_one_request_id_addressed_to_both_accounts_of_a_login_trades_in_each(fleet: Fleet, bus: Bus, project: str):
    """A scheduled slot's key (`schedule:<job>:<day>`) is the same for every account (decision 11), and a leg's
    orderRef comes from the request id: each household account's allocation under one key places its own order in
    its own account (by orderRef and account at the broker) and books only its own executions (by execId). The
    second account took the first's order, in the other account, for its own leg and bought nothing."""
    household = fleet.gateways[1]
    key = "schedule:daily-allocation:2026-06-17"
    lines: dict[str, dict[str, Any]] = {}
    for account in HOUSEHOLD:
        reply = bus.reply_to(bus.publish(allocation({"SPY": WEIGHTS[account]}, idempotencyKey=key), account=account))
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        (lines[account],) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    for account, line in lines.items():
        assert (line["outcome"], line["existing"]) == ("filled", False), line
        (order,) = [o for o in household.orders() if o["orderRef"] == line["orderRef"] and o["account"] == account]
        assert (order["action"], order["totalQuantity"], order["status"]) == ("BUY", line["order"], "Filled"), order
        assert household.positions(account) == {"SPY": line["order"]}
        executions = {e["execId"] for e in household.executions() if e["account"] == account}
        wait_for(lambda a=account, line=line: holdings(project, account=a) == {"dummy": {"SPY": line["order"]}},
                 what=f"{account}'s fill booked")  # fmt: skip
        wait_for(lambda a=account, x=executions: booked_fills(project, a) == x, what=f"{account}'s fills by execId")
    # A sweep of each account closes its own order and books nothing of the other's.
    for account in HOUSEHOLD:
        swept = bus.reply_to(bus.publish({"intent": "trade-reconciliation", "params": {}}, account=account))
        assert (swept["status"], swept["result"]["fillsAppliedCount"]) == ("ok", 0), swept
        assert mode_collection(project, "openOrders", account=account) == []
        assert holdings(project, account=account) == {"dummy": {"SPY": lines[account]["order"]}}


def test_risk_check_measures_each_accounts_own_positions_on_a_login_with_two(fleet: Fleet, bus: Bus, project: str):
    """Concentration and leverage are the addressed account's: each household account holds SPY at its own share,
    and each risk-check measures that share (ib_insync subscribes the portfolio of one account per connection, so
    the other's must not read as empty, nor as the first's)."""
    household = fleet.gateways[1]
    limits = {"concentration": {"max": 0.95, "action": "halt"}, "leverage": {"max": 1.5, "action": "halt"}}
    share: dict[str, float] = {}
    for account, weight in zip(HOUSEHOLD, (0.3, 0.9), strict=True):
        write_config(project, account=account, risk=limits)
        result, line = spy_bought(bus, project, account, weight)
        share[account] = line["order"] * result["prices"]["SPY"] / result["netLiquidation"]
    assert share[HOUSEHOLD[1]] > 2 * share[HOUSEHOLD[0]]
    for account in HOUSEHOLD:
        assert household.positions(account)["SPY"] > 0
        reply = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}, account=account))
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        measured = {line["limit"]: line for line in reply["result"]["limits"]}
        assert measured["concentration"]["instrument"] == "SPY", measured
        assert measured["concentration"]["value"] == pytest.approx(share[account], abs=0.01), measured
        assert measured["leverage"]["value"] == pytest.approx(share[account], abs=0.01), measured


def test_a_concentration_reduce_on_a_logins_second_account_sells_there_and_nowhere_else(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """The second household account breaches its concentration limit: its risk-check reduces SPY in that account to
    the limit (broker by orderRef, Firestore by execId) and the first account, holding SPY too, is not touched."""
    household = fleet.gateways[1]
    first, second = HOUSEHOLD
    exposure = {"overall": 1.0, "strategies": {"dummy": 0.9}}
    held: dict[str, float] = {}
    for account in HOUSEHOLD:
        write_config(project, account=account, exposure=exposure)
        held[account] = spy_bought(bus, project, account, 0.8)[1]["order"]
    write_config(project, account=second, exposure=exposure, risk={"concentration": {"max": 0.5, "action": "reduce"}})
    first_fills = booked_fills(project, first)

    reply = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}, account=second))
    assert (reply["status"], reply["account"]) == ("ok", second), reply
    (breach,) = reply["result"]["breaches"]
    assert [o["instrument"] for o in breach["over"]] == ["SPY"], breach
    (reduced,) = reply["result"]["reduced"]
    (spy,) = [line for line in reduced["instruments"] if line["instrument"] == "SPY"]
    assert spy["outcome"] == "filled", spy
    assert -held[second] < spy["order"] < 0
    (sent,) = [o for o in household.orders() if o["orderRef"] == spy["orderRef"]]
    assert (sent["account"], sent["action"], sent["totalQuantity"]) == (second, "SELL", -spy["order"]), sent
    executions = [e for e in household.executions() if e["orderRef"] == spy["orderRef"]]
    assert {e["account"] for e in executions} == {second}
    assert household.positions(second) == {"SPY": held[second] + spy["order"]}
    assert household.positions(first) == {"SPY": held[first]}
    wait_for(
        lambda: {e["execId"] for e in executions} <= booked_fills(project, second),
        what="the reducing executions booked by execId in the second account",
    )
    wait_for(lambda: holdings(project, account=second) == {"dummy": {"SPY": held[second] + spy["order"]}},
             what="the second account's books reduced")  # fmt: skip
    assert holdings(project, account=first) == {"dummy": {"SPY": held[first]}}
    assert booked_fills(project, first) == first_fills


def test_a_holding_of_a_logins_second_account_without_a_price_is_listed_unpriced(
    project: str, bus: Bus, accounts_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The second account holds AAPL, which the login has no market data for (IB answers 354) and whose portfolio
    marks the connection does not hold: the concentration line says it could not price it, rather than report
    the account as holding nothing; booked (reconcile fix, to unallocated), the summary's P&L names it too."""
    from ibsim import Scenario, ThreadedGateway

    accounts = scenario_accounts(*HOUSEHOLD)
    accounts[1]["positions"] = [{"symbol": "AAPL", "quantity": 500}, {"symbol": "SPY", "quantity": 100}]
    instruments = [
        {"symbol": "SPY", "secType": "ETF", "primaryExchange": "ARCA", "price": 520.0},
        {"symbol": "AAPL", "secType": "STK", "primaryExchange": "NASDAQ", "price": 190.0, "permissions": "none"},
    ]
    scenario = {"accounts": accounts, "instruments": instruments, "clock": {"start": DEFAULT_CLOCK}}
    with ThreadedGateway(port=0, scenario=Scenario.from_dict(scenario)) as gateway:
        write_config(project, account=HOUSEHOLD[1], risk={"concentration": {"max": 0.5, "action": "halt"}})
        consumer = ConsumerUnderTest.start(
            project, gateway.port, ib_account="", ib_accounts=HOUSEHOLD, accounts_file=accounts_file,
            default_deployment=True, intents_subscription="intents-consumer",
        )  # fmt: skip
        try:
            reply = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}, account=HOUSEHOLD[1]))
            fixed = bus.reply_to(bus.publish({"intent": "reconcile", "params": {"fix": True}}, account=HOUSEHOLD[1]))
            summary = bus.reply_to(bus.publish({"intent": "summary"}, account=HOUSEHOLD[1]))
        finally:
            consumer.stop()
    assert (reply["status"], reply["account"]) == ("ok", HOUSEHOLD[1]), reply
    (line,) = [line for line in reply["result"]["limits"] if line["limit"] == "concentration"]
    assert line["unpriced"] == ["AAPL"], line
    assert line["refused"] == {"AAPL": f"IB 354: {NOT_SUBSCRIBED}"}, line  # IB's reason, for the person it alerts
    assert (reply["alert"], reply["result"]["breaches"]) == (True, []), reply  # unmeasured, so a person should look
    assert (line["instrument"], line["value"]) == ("SPY", round(100 * 520.0 / reply["result"]["netLiquidation"], 6))
    assert any("risk limit unmeasured" in r.getMessage() and "AAPL" in r.getMessage() for r in caplog.records)
    assert fixed["status"] == "ok", fixed
    assert holdings(project, account=HOUSEHOLD[1]) == {"unallocated": {"AAPL": 500, "SPY": 100}}
    assert summary["status"] == "ok", summary
    assert summary["result"]["pnl"]["unallocated"]["unpriced"] == ["AAPL"], summary["result"]["pnl"]
    assert summary["result"]["pnl"]["unallocated"]["refused"] == {"AAPL": f"IB 354: {NOT_SUBSCRIBED}"}


def test_eod_check_on_a_login_with_two_accounts_reports_only_the_addressed_ones_fills_and_orders(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """Each household account trades SPY and the first leaves a limit order working: each eod-check counts its own
    account's fills, all booked, and the working order only where it belongs; the other account is clean."""
    household = fleet.gateways[1]
    first, second = HOUSEHOLD
    fills: dict[str, set[str]] = {}
    for account in HOUSEHOLD:
        line = spy_bought(bus, project, account, WEIGHTS[account])[1]
        fills[account] = {e["execId"] for e in household.executions() if e["orderRef"] == line["orderRef"]}
        wait_for(lambda a=account: booked_fills(project, a) == fills[a], what=f"{account}'s fills booked")
    working_limit_order(household, first)

    reports = {a: bus.reply_to(bus.publish({"intent": "eod-check", "params": {}}, account=a)) for a in HOUSEHOLD}
    for account, reply in reports.items():
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        report = reply["result"]
        assert (report["fills"], report["unbooked"]) == (len(fills[account]), []), report
    assert [o["account"] for o in reports[first]["result"]["openOrders"]] == [first]
    assert reports[second]["result"]["openOrders"] == []


def test_reconcile_on_a_login_with_two_accounts_finds_and_books_only_the_addressed_accounts_difference(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """Seven SPY appear in the second account behind the system's back: reconcile finds them in the second account
    only, and fix books them to the second account's unallocated book, leaving the first account's books alone."""
    household = fleet.gateways[1]
    first, second = HOUSEHOLD
    bought = {account: spy_bought(bus, project, account, WEIGHTS[account])[1]["order"] for account in HOUSEHOLD}
    household.set_position("SPY", bought[second] + 7, account=second)

    def reconcile(account: str, **params: Any) -> dict[str, Any]:
        reply = bus.reply_to(bus.publish({"intent": "reconcile", "params": params}, account=account))
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        return dict(reply["result"])

    assert reconcile(first)["differences"] == []
    assert [(d["instrument"], d["difference"]) for d in reconcile(second)["differences"]] == [("SPY", 7)]
    fixed = reconcile(second, fix=True)
    assert [(f["bookedTo"], f.get("instrument")) for f in fixed["fixed"]] == [("unallocated", "SPY")], fixed
    assert holdings(project, account=second) == {"dummy": {"SPY": bought[second]}, "unallocated": {"SPY": 7}}
    assert holdings(project, account=first) == {"dummy": {"SPY": bought[first]}}
    assert reconcile(first)["consistent"] is True
    assert reconcile(second)["consistent"] is True


def test_the_summarys_pnl_values_each_accounts_holdings_on_a_login_with_two(fleet: Fleet, bus: Bus, project: str):
    """SPY rises 10 after both household accounts bought it: each account's summary shows dummy's unrealized gain on
    its own SPY, the second's too (the connection holds IB's marks for the first account only), and agrees with
    the pnl intent."""
    household = fleet.gateways[1]
    lines = {account: spy_bought(bus, project, account, WEIGHTS[account])[1] for account in HOUSEHOLD}
    cost = {
        a: sum(e["shares"] * e["price"] for e in household.executions() if e["orderRef"] == line["orderRef"])
        for a, line in lines.items()
    }
    household.set_price("SPY", 530.0)
    household.advance_time(180)  # past the tick of IB's three-minute interval: the account window revalues SPY
    clock_seen(bus, household, account=HOUSEHOLD[0])
    for account, line in lines.items():
        expected = round(line["order"] * 530.0 - cost[account], 2)

        def summary_at_the_new_price(account: str = account, expected: float = expected) -> dict[str, Any] | None:
            summary = bus.reply_to(bus.publish({"intent": "summary"}, account=account))
            assert (summary["status"], summary["account"]) == ("ok", account), summary
            unrealized = summary["result"]["pnl"]["dummy"]["unrealized"]
            return summary if unrealized == pytest.approx(expected, abs=5.0) else None

        summary = wait_for(summary_at_the_new_price, what=f"{account}'s summary valuing SPY at 530")
        pnl = bus.reply_to(bus.publish({"intent": "pnl"}, account=account))
        assert pnl["status"] == "ok", pnl
        # Commissions are in the cost: the gain is a little under 10 a share.
        assert summary["result"]["pnl"]["dummy"]["unrealized"] == pytest.approx(expected, abs=5.0), summary
        assert summary["result"]["pnl"]["dummy"] == pnl["result"]["pnl"]["dummy"]


def test_a_deployments_delivery_probe_is_addressed_to_its_own_account(
    project: str, bus: Bus, gateways: tuple[Any, Any], accounts_file: str
) -> None:
    """In the cloud a non-default deployment's subscription passes only its accounts' messages: an unaddressed
    probe would never come back and readiness would report delivery stalled. (The emulator ignores filters, so
    the probe's address is checked on a subscription of its own.)"""
    from google.cloud import pubsub_v1

    from consumer.transport.delivery_watch import PROBE_ATTRIBUTE

    peek = another_intents_subscription(project, "intents-peek")
    household = ConsumerUnderTest.start(
        project,
        gateways[1].port,
        ib_account="",
        ib_accounts=HOUSEHOLD,
        accounts_file=accounts_file,
        default_deployment=False,
        delivery_probe=0.5,
    )
    subscriber = pubsub_v1.SubscriberClient()
    try:
        path = subscriber.subscription_path(project, peek)

        def probe() -> dict[str, str] | None:
            pulled = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=10)
            found = [dict(m.message.attributes) for m in pulled.received_messages]
            return next((a for a in found if PROBE_ATTRIBUTE in a), None)

        attributes = wait_for(probe, timeout=30, what="a delivery probe")
        assert attributes["account"] == HOUSEHOLD[0]
    finally:
        subscriber.close()
        household.stop()


def test_a_logins_second_account_is_read_once_its_positions_count_the_last_fill(
    fleet: Fleet, bus: Bus, project: str
) -> None:
    """IB sends a fill's positions a moment after the execution, and account values on a price move at any time: a
    value that comes in between is no sign that the positions count the fill. A risk-check right after a buy in the
    login's second account, with a price move in between, measures the position bought (it read none)."""
    household = fleet.gateways[1]
    second = HOUSEHOLD[1]
    write_config(project, account=second, risk={"concentration": {"max": 0.95, "action": "halt"}})
    household.call(setattr, household.server.scenario, "accountAfterFillMs", 2000.0)
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.9}), account=second))
    assert reply["status"] == "ok", reply
    (line,) = [i for i in reply["result"]["instruments"] if i["instrument"] == "SPY"]
    assert line["outcome"] == "filled", line
    household.set_price("SPY", 521.0)  # the account's values go out now, its positions with the fill's update

    checked = bus.reply_to(bus.publish({"intent": "risk-check", "params": {}}, account=second))
    assert (checked["status"], checked["account"]) == ("ok", second), checked
    (concentration,) = [limit for limit in checked["result"]["limits"] if limit["limit"] == "concentration"]
    assert concentration["instrument"] == "SPY", concentration
    assert concentration["value"] == pytest.approx(line["order"] * 521.0 / reply["result"]["netLiquidation"], abs=0.01)
    assert household.positions(second) == {"SPY": line["order"]}
    fills = {e["execId"] for e in household.executions() if e["orderRef"] == line["orderRef"]}
    wait_for(lambda: fills <= booked_fills(project, second), what="the buy booked by execId")


def test_a_message_addressed_by_alias_is_answered_when_only_the_default_deployment_has_the_accounts_file(
    project: str, bus: Bus, gateways: tuple[Any, Any], accounts_file: str
) -> None:
    """README: "give every deployment the same file (the default one at least)". With the file at the default
    deployment only, a summary addressed `child`: the default resolved the alias to DU333333, served elsewhere, and
    acked it; the household deployment, without the file, could not resolve `child` and acked it too. No reply.
    An alias is the default's to answer: once, naming the id to address the account by."""
    another_intents_subscription(project, HOUSEHOLD_SUBSCRIPTION)
    started = [
        ConsumerUnderTest.start(project, gateways[0].port, ib_account="", ib_accounts=(SOLO,),
                                accounts_file=accounts_file, default_deployment=True,
                                intents_subscription="intents-consumer"),
        ConsumerUnderTest.start(project, gateways[1].port, ib_account="", ib_accounts=HOUSEHOLD,
                                default_deployment=False, intents_subscription=HOUSEHOLD_SUBSCRIPTION),
    ]  # fmt: skip
    child = HOUSEHOLD[1]
    try:
        by_id = bus.publish({"intent": "summary"}, account=child)
        assert [(r["status"], r["account"]) for r in bus.replies_to(by_id)] == [("ok", child)]
        by_alias = bus.publish({"intent": "summary"}, account=ALIASES[child])
        with contextlib.suppress(AssertionError):  # the same summary addressed by id answered within a second
            bus.reply_to(by_alias, timeout=20)
        bus.settle()
    finally:
        for consumer in started:
            consumer.stop()
    replies = [(r["status"], r["account"], (r.get("error") or {}).get("code")) for r in bus.received
               if r["messageId"] == by_alias]  # fmt: skip
    assert replies == [("error", SOLO, "unknown_account")], f"replies to the summary addressed 'child': {replies}"
    (refusal,) = [r for r in bus.received if r["messageId"] == by_alias]
    assert f"the attribute account={child}" in refusal["error"]["message"], refusal


def test_the_kill_switch_set_through_an_alias_stops_that_accounts_trading(
    project: str, bus: Bus, gateways: tuple[Any, Any], accounts_file: str
) -> None:
    """`consumer --account child config kill-switch on`: --account takes an id or an alias (its help; publish and
    every message resolve aliases), and the operator was told "kill switch ON: trading intents are rejected". The
    CLI wrote accounts/child/config/paper, which no consumer reads; an allocation for `child` then bought in
    DU333333. A name the accounts file does not know is refused in one line, nothing written."""
    household, child = gateways[1], HOUSEHOLD[1]
    for account in HOUSEHOLD:
        write_config(project, account=account)
    env = {k: v for k, v in os.environ.items() if k not in ("IB_ACCOUNT", "IB_ACCOUNTS")}
    env.update(GOOGLE_CLOUD_PROJECT=project, IB_ACCOUNTS=",".join(HOUSEHOLD), ACCOUNTS_FILE=accounts_file)

    def cli(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "consumer", "--account", name, "config", "kill-switch", "on"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    consumer = ConsumerUnderTest.start(project, household.port, ib_account="", ib_accounts=HOUSEHOLD,
                                       accounts_file=accounts_file, default_deployment=True)  # fmt: skip
    try:
        done = cli(ALIASES[child])
        switched = f"{done.returncode}: {done.stdout.strip()} {done.stderr.strip()}"
        reply = bus.reply_to(bus.publish(allocation({"SPY": 0.02}), account=ALIASES[child]))
    finally:
        consumer.stop()
    bought = [(o["account"], o["action"], o["totalQuantity"]) for o in household.orders()]
    config = account_document(project, child).collection("config").document("paper").get().to_dict() or {}
    outcome = (reply["status"], (reply.get("error") or {}).get("code"))
    assert (done.returncode, outcome, bought) == (0, ("rejected", "kill_switch"), []), (
        f"the CLI said '{switched}'; accounts/{child}/config/paper tradingEnabled={config.get('tradingEnabled')}; "
        f"the allocation for 'child' answered {outcome} and the broker has {bought}"
    )
    assert done.stdout.startswith(f"accounts/{child}/config/paper: kill switch ON"), switched
    assert not account_document(project, "child").collection("config").document("paper").get().exists

    typo = cli("chlid")
    assert typo.returncode == 2, typo
    assert typo.stderr.splitlines() == [
        f"consumer config: --account: 'chlid' is neither an account id nor an alias in ACCOUNTS_FILE {accounts_file}: "
        f"{SOLO} (solo), {HOUSEHOLD[0]} (parent), {child} (child)"
    ]
    assert not account_document(project, "chlid").collection("config").document("paper").get().exists
