"""config marketDataType: applied on every connection, and prices falling back to delayed data as IB allows (issue 12).

Each test runs its own simulated gateway (one without a live subscription) and consumer, so the consumer's first
connection is to the gateway under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ibsim import ThreadedGateway
from tests.support import NOT_SUBSCRIBED, Bus, ConsumerUnderTest, allocation, sim_scenario, wait_for, write_config


@pytest.fixture
def unsubscribed() -> Iterator[ThreadedGateway]:
    """A login without live market data: IB answers 354 to live requests, delayed data with 10167."""
    with ThreadedGateway(port=0, scenario=sim_scenario({"marketData": {"liveSubscription": False}})) as gw:
        yield gw


@pytest.fixture
def start_consumer(project: str, bus: Bus) -> Iterator[Any]:
    started: list[ConsumerUnderTest] = []

    def start(gateway: ThreadedGateway) -> ConsumerUnderTest:
        c = ConsumerUnderTest.start(project=project, gateway_port=gateway.port)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def test_the_market_data_type_is_applied_on_connect_and_again_after_every_reconnect(
    bus: Bus, gateway: ThreadedGateway, project: str, start_consumer: Any
):
    write_config(project, marketDataType=3)
    start_consumer(gateway)
    assert bus.reply_to(bus.publish(allocation({"SPY": 0.05}, dry_run=True)))["status"] == "ok"
    assert gateway.market_data_types()[-1] == (1, 3)

    seen = len(gateway.market_data_types())
    assert gateway.drop_connections() == 1
    wait_for(lambda: len(gateway.market_data_types()) > seen, what="the type sent again on the new connection")
    assert gateway.market_data_types()[seen:] == [(1, 3)]  # without any intent asking: the connection's setting

    write_config(project, marketDataType=1)
    assert bus.reply_to(bus.publish(allocation({"SPY": 0.05}, dry_run=True)))["status"] == "ok"
    assert gateway.market_data_types()[-1] == (1, 1)


def test_without_a_live_subscription_prices_fall_back_to_delayed_data_only_when_configured(
    bus: Bus, unsubscribed: ThreadedGateway, project: str, start_consumer: Any
):
    write_config(project, marketDataType=1)
    start_consumer(unsubscribed)
    live = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, dry_run=True)))
    assert live["status"] == "ok", live
    assert live["result"]["strategies"]["dummy"] == {
        "status": "skipped",
        "reason": f"no price for SPY (IB 354: {NOT_SUBSCRIBED})",
    }
    assert live["alert"] is True

    write_config(project, marketDataType=3)
    delayed = bus.reply_to(bus.publish(allocation({"SPY": 0.05}, dry_run=True)))
    assert delayed["status"] == "ok", delayed
    assert delayed["result"]["strategies"]["dummy"]["status"] == "ok", delayed["result"]["strategies"]
    assert delayed["result"]["prices"]["SPY"] == 520.0  # the delayed quote's last, within its bid/ask
    assert unsubscribed.market_data_types()[-1] == (1, 3)
    assert unsubscribed.orders() == []
