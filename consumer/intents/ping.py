"""ping (alias health): gateway time and connection state. Answers even while the gateway is away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumer.intents.base import Intent, IntentContext


async def ping(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    broker = ctx.broker
    settings = ctx.services.settings
    result: dict[str, Any] = {
        "connected": broker.ready,
        "state": broker.state.value,
        "host": settings.ib_host,
        "port": settings.ib_port,
        "clientId": settings.ib_client_id,
        "connections": broker.connections,
    }
    if broker.ready:
        started = time.perf_counter()
        # The same round trip the connect attempt bounds with IB_CONNECT_TIMEOUT.
        gateway_time = await asyncio.wait_for(broker.current_time(), timeout=settings.ib_connect_timeout)
        result.update(
            gatewayTime=gateway_time.isoformat(),
            roundTripMs=round((time.perf_counter() - started) * 1000, 3),
            serverVersion=broker.server_version(),
            accounts=broker.managed_accounts(),
            readOnlyApi=broker.read_only,  # true: IB refuses orders (IBC ReadOnlyApi=yes)
        )
    return result


INTENT = Intent(name="ping", handler=ping, description="Gateway time and connection state.", needs_gateway=False)
HEALTH = Intent(name="health", handler=ping, description="Alias of ping.", needs_gateway=False)
