"""ping (alias health): gateway time and connection state. Answers even while the gateway is away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from consumer.intents.base import Intent, IntentContext


async def ping(ctx: IntentContext, params: dict[str, Any]) -> dict[str, Any]:
    gateway = ctx.services.gateway
    settings = ctx.services.settings
    result: dict[str, Any] = {
        "connected": gateway.ready,
        "state": gateway.state.value,
        "host": settings.ib_host,
        "port": settings.ib_port,
        "clientId": settings.ib_client_id,
        "connections": gateway.connections,
    }
    if gateway.ready:
        ib = gateway.ib
        started = time.perf_counter()
        gateway_time = await asyncio.wait_for(gateway.requests.current_time(), timeout=10)
        result.update(
            gatewayTime=gateway_time.isoformat(),
            roundTripMs=round((time.perf_counter() - started) * 1000, 3),
            serverVersion=ib.client.serverVersion(),
            accounts=ib.managedAccounts(),
        )
    return result


INTENT = Intent(name="ping", handler=ping, description="Gateway time and connection state.", needs_gateway=False)
HEALTH = Intent(name="health", handler=ping, description="Alias of ping.", needs_gateway=False)
