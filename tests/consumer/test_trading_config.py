"""config/{mode} as the consumer reads it and `consumer config` edits it (consumer/store/trading_config.py)."""

from __future__ import annotations

import pytest

from consumer.devstack.seed import local_paper_config
from consumer.schemas import Schemas
from consumer.store.trading_config import DeploymentLimits, TradingConfig, check_document, edited
from consumer.strategies import discover

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
