"""GatewayServer and ib_insync's async API sharing one event loop."""

from __future__ import annotations

import asyncio

from ib_insync import IB, MarketOrder, Stock

from ibsim import GatewayServer
from tests.support import sim_scenario


async def test_same_loop_connect_order_and_faults() -> None:
    server = GatewayServer(sim_scenario(), "127.0.0.1", 0)
    await server.start()
    ib = IB()
    try:
        await ib.connectAsync("127.0.0.1", server.port, clientId=4, timeout=4)
        assert server.connected_client_ids() == [4]
        [spy] = await ib.qualifyContractsAsync(Stock("SPY", "SMART", "USD"))
        trade = ib.placeOrder(spy, MarketOrder("BUY", 600))
        await asyncio.wait_for(trade.filledEvent, 5)
        assert [f.execution.shares for f in trade.fills] == [500, 100]
        assert server.positions() == {"SPY": 600}

        got_1101 = asyncio.Event()
        ib.errorEvent += lambda req_id, code, msg, contract: code == 1101 and got_1101.set()
        server.send_error(1101)
        await asyncio.wait_for(got_1101.wait(), 5)

        dropped = asyncio.Event()
        ib.disconnectedEvent += dropped.set
        server.drop_connections()
        await asyncio.wait_for(dropped.wait(), 5)
        assert not ib.isConnected()
    finally:
        ib.disconnect()
        await server.stop()
