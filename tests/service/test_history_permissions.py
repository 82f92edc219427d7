"""History without a market-data permission (ibsim marketData.permissions: delayed): IB's 162 reaches the reply
with its text; it is never stored or traded on as "no bars"."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import SIGNAL_PARAMS, Bus, holdings, mode_document

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

NO_PERMISSIONS = "IB error 162: Historical Market Data Service error message:No market data permissions for ARCA STK"


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    return {"exposure": {"overall": 1.0, "strategies": {"dummy": 0.5, "testsignalgenerator": 0.5}}}


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"marketData": {"permissions": "delayed"}}


def test_collect_market_data_without_permission_is_an_error_with_ibs_text(bus: Bus, project: str):
    body = {"intent": "collect-market-data", "params": {"instruments": ["SPY"], "barSize": "1 day", "duration": "5 D"}}
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "error", reply
    assert reply["error"]["code"] == "history_refused"
    assert reply["error"]["message"] == f"SPY history: {NO_PERMISSIONS}"
    market_data = mode_document(project).collection("marketData")
    assert list(market_data.document("SPY").collection("bars").stream()) == []


def test_a_strategy_without_permission_for_its_history_is_skipped_with_ibs_reason(bus: Bus, gateway, project: str):
    body = {
        "intent": "allocation",
        "params": {"strategies": ["testsignalgenerator"], "strategyParams": {"testsignalgenerator": SIGNAL_PARAMS}},
    }
    reply = bus.reply_to(bus.publish(body))
    strategy = reply["result"]["strategies"]["testsignalgenerator"]
    assert strategy["status"] == "skipped", reply
    assert NO_PERMISSIONS in strategy["reason"]
    assert gateway.orders() == []
    assert gateway.executions() == []
    assert holdings(project) == {}
