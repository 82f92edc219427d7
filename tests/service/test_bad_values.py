"""Bad values that passed every check: non-finite numbers in the operator's config document, one instrument named
twice in a strategy's weights, error messages repeating thousands of names. Found by an independent review of bad
input; each test failed before its fix, for the reason its docstring gives. Each gets one error reply and no order
(checked at the broker by the orderRef the request would have used)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest

from consumer.broker.orders import order_ref
from consumer.schemas import Schemas
from consumer.store.trading_config import DeploymentLimits, check_document
from tests.support import Bus, activity, allocation, trading_config, wait_for, write_config

pytestmark = pytest.mark.usefixtures("paper_config")

NAN = math.nan


@pytest.fixture
def consumer(consumer_factory):
    """Orders waited on for 3 s, not 30 (a leg that is placed is reported without a long wait)."""
    return consumer_factory(order_timeout=3.0)


def only_reply(bus: Bus, message_id: str) -> dict[str, Any]:
    replies = bus.replies_to(message_id)  # a nacked message would come back and be answered again
    assert len(replies) == 1, replies
    return replies[0]


def orders_of(gateway: Any, intent: str, request_id: str) -> list[dict[str, Any]]:
    """Every order at the broker whose orderRef this request would have used (any leg)."""
    prefix = order_ref(intent, request_id, "")
    return [o for o in gateway.orders() if str(o.get("orderRef", "")).startswith(prefix)]


def key() -> str:
    return f"review-{uuid.uuid4().hex[:10]}"


# -- the operator's config document: non-finite numbers -----------------------------------------------------------


def test_the_cli_refuses_a_config_leverage_cap_of_nan():
    """`consumer config set leverageCap NaN` parses the value with json.loads (which reads NaN) and checks it with
    check_document: the schema's exclusiveMinimum/maximum are comparisons, and NaN fails none of them, so the
    document is written. The consumer then reads a leverage cap of NaN (next test)."""
    document = trading_config(leverageCap=NAN)
    with pytest.raises(ValueError, match="leverageCap"):
        check_document(document, Schemas(), "accounts/DU123456/config/paper", DeploymentLimits())


def test_a_config_leverage_cap_of_nan_does_not_lift_the_deployments_cap(consumer, bus: Bus, gateway, project: str):
    """config leverageCap NaN passed the schema (NaN <= 0 and NaN > 10 are both False); min(NaN, LEVERAGE_CAP_MAX)
    is NaN, and every leverage check (`committed > cap`, `gross + elsewhere > cap`) is False against NaN. The
    document, which "can only tighten" the deployment's ceiling, switched it off: an allocation of 1.25x net
    liquidation (refused with leverage_exceeded under a cap of 1) was placed. Expected: one error reply (the config
    is invalid, or the targets exceed the cap), and no order."""
    write_config(project, leverageCap=NAN)
    request_id = key()
    reply = only_reply(bus, bus.publish(allocation({"SPY": 1.5, "TLT": 1.0}, idempotencyKey=request_id)))
    assert reply["status"] == "error", reply
    assert reply["error"]["code"] in {"config_invalid", "leverage_exceeded"}, reply
    assert orders_of(gateway, "allocation", request_id) == []


@pytest.mark.parametrize(
    "exposure",
    [
        pytest.param({"overall": NAN, "strategies": {"dummy": 0.5}}, id="overall-nan"),
        pytest.param({"overall": 0.0, "strategies": {"dummy": math.inf}}, id="share-infinity-times-zero"),
    ],
)
def test_a_config_exposure_that_is_not_a_number_is_one_clear_error_not_five_runs(
    consumer, bus: Bus, gateway, project: str, exposure: dict[str, Any]
):
    """exposure.overall NaN (or a share of Infinity beside an overall of 0: 0 x inf is NaN) passed the schema and the
    leverage check (NaN > cap is False) and `capital_share <= 0` (False for NaN): the allocation sized NaN capital,
    math.trunc(NaN) raised ValueError, which the dispatcher reads as transient. Every allocation then ran five
    times and was dead-lettered ('internal: ValueError: cannot convert float NaN to integer'), holding the trading
    lock each time. Expected: the config refused at once, one error reply (config_invalid), one run, no order."""
    write_config(project, exposure=exposure)
    request_id = key()
    message_id = bus.publish(allocation({"SPY": 0.1}, idempotencyKey=request_id))
    reply = only_reply(bus, message_id)
    assert (reply["status"], reply["error"]["code"]) == ("error", "config_invalid"), reply["error"]
    records = wait_for(lambda: activity(project, requestId=request_id), what="the activity record")
    assert [r["deliveryAttempt"] in (None, 1) for r in records] == [True], records
    assert orders_of(gateway, "allocation", request_id) == []


def test_a_config_cash_threshold_of_nan_is_refused_not_converting_every_balance(
    consumer, bus: Bus, gateway, project: str
):
    """cashBalancer.threshold NaN passed the schema (NaN < 0 is False); the cash-balancer compares
    `abs(value) < NaN` (False) for every balance, so it converted all the account's foreign cash whatever its
    size, and replied ok with `"threshold": NaN`: a reply whose JSON text is not JSON (NaN is no JSON token).
    Expected: one error reply (config_invalid), no conversion at the broker."""
    write_config(project, cashBalancer={"threshold": NAN})
    request_id = key()
    reply = only_reply(bus, bus.publish({"intent": "cash-balancer", "idempotencyKey": request_id}))
    assert (reply["status"], (reply.get("error") or {}).get("code")) == ("error", "config_invalid"), reply
    assert orders_of(gateway, "cash", request_id) == []  # cash-balancer's orderRefs: order_ref("cash", ...)


def test_a_risk_limit_of_nan_is_refused_not_silently_off(consumer, bus: Bus, gateway, project: str):
    """risk.leverage.max NaN passed the schema (exclusiveMinimum: NaN <= 0 is False), and risk-check compares the
    measured leverage with `> NaN`, False whatever the account holds: the limit the operator configured (here with
    action halt) was off, and risk-check answered ok with no breach and no alert. Expected: one error reply
    (config_invalid), as for any other invalid limit (tests/consumer/test_trading_config.py)."""
    write_config(project, risk={"leverage": {"max": NAN, "action": "halt"}})
    reply = only_reply(bus, bus.publish({"intent": "risk-check"}))
    assert (reply["status"], (reply.get("error") or {}).get("code")) == ("error", "config_invalid"), reply.get("result")


# -- message params -------------------------------------------------------------------------------------------------


def _names(count: int) -> list[str]:
    return [f"s{n:05d}-" + "x" * 56 for n in range(count)]  # 63 characters each: the pattern's longest is 64


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(
            {"intent": "allocation", "params": {"strategies": _names(3000)}}, "invalid_params", id="allocation-3000"
        ),
        pytest.param(
            {"intent": "close-all", "params": {"strategies": _names(3000)}}, "invalid_params", id="close-all-3000"
        ),
        pytest.param(
            {"intent": "allocation", "params": {"strategies": _names(100)}}, "invalid_strategies", id="allocation-100"
        ),
        pytest.param(
            {"intent": "close-all", "params": {"strategies": _names(100)}}, "unknown_strategy", id="close-all-100"
        ),
    ],
)
def test_unknown_strategy_names_are_not_echoed_back_whole(consumer, bus: Bus, gateway, body: dict[str, Any], code: str):
    """README: "An error repeats at most 120 characters of what it refuses." A trading intent naming 3,000 strategies
    that do not exist (a 200 kB message, within the 256 KiB bound; `strategies` had no maxItems) was answered with
    every name repeated: invalid_strategies joined all of them into the message and again into `details`
    (consumer/strategies/__init__.py naming_problems; close-all's unknown_strategy likewise), a reply of
    hundreds of kB. Now 3,000 is over the schema's maxItems (100), and 100 unknown names are clipped."""
    reply = only_reply(bus, bus.publish(body))
    assert (reply["status"], reply["error"]["code"]) == ("error", code), reply["error"]["code"]
    echoed = len(reply["error"]["message"]) + sum(len(str(d)) for d in reply["error"].get("details") or [])
    assert echoed < 4000, f"the error repeats {echoed:,} characters of the message"
    assert gateway.orders() == []


def test_one_instrument_named_twice_is_refused_not_half_traded(consumer, bus: Bus, gateway):
    """dummy's weights may name one IDEALPRO pair twice, as "EUR.USD" and as "EUR" with currency USD (both
    secType CASH: contract_for makes the same contract of each). Both resolve to one conId, and the allocation
    sizes them into `targets[name][con_id]` one after the other: the second silently replaces the first. The
    leverage check counted both weights, the reply listed both as dummy's weights with status ok, and one order
    went out for one of them. Expected: an error naming the instrument given twice, and no order."""
    weights = {"EUR.USD": 0.02, "EUR": -0.01}
    instruments = {"EUR.USD": {"secType": "CASH"}, "EUR": {"secType": "CASH", "currency": "USD"}}
    request_id = key()
    params = {"strategyParams": {"dummy": {"weights": weights, "instruments": instruments}}}
    reply = only_reply(bus, bus.publish(allocation(weights, params=params, idempotencyKey=request_id)))
    placed = [(o["orderRef"], o["action"], o["totalQuantity"]) for o in orders_of(gateway, "allocation", request_id)]
    assert reply["status"] == "error", (reply["status"], reply["result"] and reply["result"]["instruments"], placed)
    assert placed == []
