"""config/{mode} as the consumer reads it and `consumer config` edits it (consumer/store/trading_config.py)."""

from __future__ import annotations

import pytest

from consumer.errors import IntentError
from consumer.schemas import Schemas
from consumer.store.trading_config import DeploymentLimits, TradingConfig, check_document, edited
from consumer.strategies import discover
from devstack.seed import local_paper_config

LIMITS = DeploymentLimits()


def load(document: dict) -> TradingConfig:
    return TradingConfig.from_document(document, Schemas(), "config/paper", LIMITS)


def test_without_default_strategies_a_plain_allocation_runs_every_funded_strategy():
    config = load({"exposure": {"overall": 0.5, "strategies": {"a": 0.5, "b": 0.5, "c": 0.0}}})
    assert config.enabled_strategies == ["a", "b"]


def test_default_strategies_narrow_what_a_plain_allocation_runs_to_funded_ones():
    """dummy has capital for the messages that name it, but needs their weights: it is no default."""
    config = load(
        {"exposure": {"overall": 0.5, "strategies": {"dummy": 0.5, "a": 0.5, "c": 0.0}},
         "defaultStrategies": ["a", "c"]}
    )  # fmt: skip
    assert config.enabled_strategies == ["a"]
    assert config.capital_share("dummy") == 0.25


def test_the_seeded_config_defaults_to_the_strategies_that_need_no_params():
    strategies = {sid: cls.params_schema for sid, cls in discover().items()}
    config = load(local_paper_config(strategies))
    assert "dummy" in config.strategy_exposure
    assert config.enabled_strategies == sorted(set(strategies) - {"dummy"})
    assert config.trading_enabled
    assert config.market_data_type == 3  # the paper scenario has live data for US ETFs only


def test_an_edit_is_checked_as_the_consumer_reads_it():
    document = {"tradingEnabled": True, "exposure": {"overall": 1.0, "strategies": {"dummy": 0.5}}}
    changed = edited(document, "exposure.strategies.a", 0.5)
    assert check_document(changed, Schemas(), "config/paper", LIMITS).strategy_exposure == {"dummy": 0.5, "a": 0.5}
    assert document["exposure"]["strategies"] == {"dummy": 0.5}  # the original is left alone
    with pytest.raises(ValueError, match="above the leverage cap 1"):
        check_document(edited(document, "exposure.strategies.a", 0.6), Schemas(), "config/paper", LIMITS)
    with pytest.raises(ValueError, match="tradingEnabled: 'yes' is not of type 'boolean'"):
        check_document(edited(document, "tradingEnabled", "yes"), Schemas(), "config/paper", LIMITS)
    with pytest.raises(ValueError, match="tradingEnabled is not an object"):
        edited(document, "tradingEnabled.x", 1)
    assert "exposure" not in edited(document, "exposure", None, unset=True)


def test_flat_at_close_is_read_per_strategy_and_a_wrong_value_is_refused_with_its_field():
    config = load({"strategies": {"intraday": {"flatAtClose": True}, "swing": {"flatAtClose": False}}})
    assert config.flat_at_close == frozenset({"intraday"})
    with pytest.raises(IntentError, match="flatAtClose"):
        load({"strategies": {"intraday": {"flatAtClose": "yes"}}})
    with pytest.raises(IntentError, match="flatAtclose"):
        load({"strategies": {"intraday": {"flatAtclose": True}}})  # a typo is not silently ignored


BASE = {"tradingEnabled": True, "exposure": {"overall": 1.0, "strategies": {"dummy": 0.5}}}


def test_risk_limits_are_read_as_written_and_off_when_absent():
    assert load(BASE).risk == {}
    assert load(BASE).drift_bands == {}
    assert load(BASE).order_defaults.min_trade_value == 0.0
    limits = {"leverage": {"max": 1.5, "action": "reduce"}, "marginCushion": {"min": 0.1, "action": "halt"},
              "dailyLoss": {"max": 0.02}, "drawdown": {"max": 0.1}, "concentration": {"max": 0.3, "action": "reduce"},
              "staleOrders": {"maxMinutes": 60}, "drift": {"action": "report"}}  # fmt: skip
    assert load(BASE).drawdowns == {}
    config = load({**BASE, "risk": limits, "orderDefaults": {"minTradeValue": 100},
                   "strategies": {"dummy": {"driftBand": 0.05, "drawdown": {"max": 0.1, "action": "reduce"}},
                                  "swing": {"drawdown": {"max": 0.2}}}})  # fmt: skip
    assert config.risk == limits
    assert config.drawdowns == {"dummy": {"max": 0.1, "action": "reduce"}, "swing": {"max": 0.2}}
    assert config.order_defaults.min_trade_value == 100
    assert config.drift_bands == {"dummy": 0.05}


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("risk.dailyLoss.max", "risk.dailyLoss.max: -0.02 is less than or equal to the minimum of 0"),
        ("risk.leverage.max", "risk.leverage.max: 'high' is not of type 'number'"),
        ("risk.dailyLoss.action", "risk.dailyLoss.action: 'reduce' is not one of ['report', 'halt']"),
        ("risk.leverage.action", "risk.leverage.action: 'panic' is not one of ['report', 'halt', 'reduce']"),
        ("risk.leverage.maximum", "risk.leverage: Additional properties are not allowed ('maximum' was unexpected)"),
        ("risk.volatility", "risk: Additional properties are not allowed ('volatility' was unexpected)"),
        ("orderDefaults.minTradeValue", "orderDefaults.minTradeValue: -1 is less than the minimum of 0"),
        ("strategies.dummy.driftBand", "strategies.dummy.driftBand: 'wide' is not of type 'number'"),
        ("strategies.dummy.drawdown.max", "strategies.dummy.drawdown.max: 1.5 is greater than the maximum of 1"),
        ("strategies.dummy.drawdown.action", "strategies.dummy.drawdown.action: 'close' is not one of"),
        ("strategies.dummy.drawdown", "strategies.dummy.drawdown: 'max' is a required property"),
    ],
)
def test_bad_limits_are_refused_with_the_field_named(edit: str, named: str):
    """Negative, non-number, unknown or misplaced action, unknown key: each refused, naming the field."""
    values = {"risk.dailyLoss.max": -0.02, "risk.leverage.max": "high", "risk.dailyLoss.action": "reduce",
              "risk.leverage.action": "panic", "risk.leverage.maximum": 2, "risk.volatility": {"max": 1},
              "orderDefaults.minTradeValue": -1, "strategies.dummy.driftBand": "wide",
              "strategies.dummy.drawdown.max": 1.5, "strategies.dummy.drawdown.action": "close",
              "strategies.dummy.drawdown": {"action": "halt"}}  # fmt: skip
    document = edited({**BASE, "risk": {"leverage": {"max": 1.5}}}, edit, values[edit])
    with pytest.raises(ValueError, match="is invalid") as refused:
        check_document(document, Schemas(), "config/paper", LIMITS)
    assert named in str(refused.value)
