"""Faults, controls and queries are declared once (@fault/@query marks); all else is derived and checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ib_insync import IB, MarketOrder, Stock

from ibsim import GatewayServer, Scenario, ScenarioError, ThreadedGateway
from ibsim.controls import controls
from ibsim.faults import SCHEDULED

from .conftest import wait_until

DOCS = (Path(__file__).parents[2] / "docs" / "ibsim.md").read_text()


def section(title: str) -> str:
    start = DOCS.index(title)
    end = DOCS.find("\n#", start + len(title))
    return DOCS[start : end if end != -1 else None]


def declared(kind: str) -> set[str]:
    return {name for name, c in controls(GatewayServer).items() if c.kind == kind}


def test_the_fault_table_in_the_docs_lists_exactly_the_declared_faults() -> None:
    rows = [line for line in section("### Fault API").splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)\(", row.split(" | ")[0])}
    assert documented == declared("fault")


def test_the_inspection_paragraph_lists_exactly_the_declared_queries() -> None:
    paragraph = DOCS[DOCS.index("Inspection (plain data copies):") :].split("\n\n")[0]
    assert set(re.findall(r"`(\w+)\(", paragraph)) == declared("query")


def test_the_docs_list_exactly_the_scheduled_actions_with_their_arguments() -> None:
    paragraph = DOCS[DOCS.index("Fault actions:") :].split("\n\n")[0]
    documented = {" ".join(item.split()) for item in re.findall(r"`([^`]+)`", paragraph)}
    assert documented == {a.describe() for a in SCHEDULED.values()}


def test_every_declared_method_has_a_thread_safe_twin_with_its_signature() -> None:
    for name in controls(GatewayServer):
        twin = getattr(ThreadedGateway, name)
        assert twin.__wrapped__ is getattr(GatewayServer, name), name


@pytest.mark.parametrize("action", sorted(SCHEDULED))
def test_every_scheduled_action_is_accepted_by_the_scenario_validator(action: str) -> None:
    declared_action = SCHEDULED[action]
    examples = {int: 1101, float: 0.5, str: "SPY"}
    args = {p.name: examples[p.accepts[-1]] for p in declared_action.params if p.required}
    if action == "set_price":
        args["price"] = 500.0
    if action == "stall_request":
        args["request"] = "reqExecutions"  # checked against the TWS requests ibsim knows
    scenario = Scenario.from_dict({"faults": [{"at": 1, "action": action, "args": args}]})
    assert [(f.action, f.args) for f in scenario.faults] == [(action, args)]


def test_a_fixed_argument_cannot_be_given_in_a_scenario() -> None:
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.args\.on: not an argument of freeze"):
        Scenario.from_dict({"faults": [{"at": 1, "action": "freeze", "args": {"on": False}}]})


def test_an_aliased_action_calls_its_method_with_the_fixed_arguments(gw: ThreadedGateway, ib: IB) -> None:
    """`hold_fills` and `release_fills` are hold_fills(on=True/False), run as a scenario's schedule runs them."""
    assert gw.server is not None
    gw.call(gw.server.run_scheduled, "hold_fills", {})
    trade = ib.placeOrder(Stock("SPY", "SMART", "USD"), MarketOrder("BUY", 10))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="the order accepted")
    assert gw.executions() == []
    gw.call(gw.server.run_scheduled, "release_fills", {})
    wait_until(ib, trade.isDone, what="the held order filled once released")
    assert [(e["orderRef"], e["shares"]) for e in gw.executions()] == [("", 10)]
