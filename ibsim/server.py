"""GatewayServer: the TCP server speaking the TWS API, with the fault controls tests use.

It is assembled from one module per concern, each a layer over the previous one:

- core.py        state every concern shares: scenario, clock, instruments, broker, connections, the state file
- connection.py  one client socket: handshake, framing, pacing, latency
- dispatch.py    the table of answered messages, refusal of the others, startApi
- account.py     account updates, summary, positions, PnL, and their pushes
- history.py     historical bars (IB's pacing and refusals), the contract look-up market data shares
- marketdata.py  contract details, quotes, price moves
- orders.py      placeOrder, cancels, open/completed orders, executions; the broker's listener
- faults.py      faults and controls (declared with ibsim/controls.py's marks)

This module adds the lifecycle and the inspection queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .connection import Connection
from .controls import query
from .dispatch import Dispatch
from .faults import Faults
from .scenario import Scenario
from .simorder import ib_time

log = logging.getLogger("ibsim")


class GatewayServer(Dispatch, Faults):
    """A simulated IB Gateway. All methods run on the server's event loop (use ThreadedGateway from other threads).

    `GatewayServer(scenario=None, host="127.0.0.1", port=4002, state_file=None)`; `await start()` listens (port 0:
    any free port, then `port` says which), `await stop()` closes every socket and writes the state file.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        host: str = "127.0.0.1",
        port: int = 4002,
        state_file: str | Path | None = None,
    ) -> None:
        super().__init__(scenario, host, port, state_file)  # each layer sets up its own state on the way down

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._listen()
        self._started = True
        self.started_at = time.monotonic()
        self.schedule_faults()
        if any(i.spec.volatility > 0 for i in self.instruments.values()):
            self._spawn(self._ticker())
        log.info(
            "listening on %s:%d (scenario %s, %d instruments, accounts %s)",
            self.host,
            self.port,
            self.scenario.name,
            len(self.instruments),
            ",".join(self.broker.accounts),
        )

    async def stop(self) -> None:
        for handle in (
            *self._timers,
            self._reopen,
            self._save_handle,
            self._account_push,
            self._fill_push,
            self._interval_push,
        ):
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        self.clients.clear()
        self._save_now()
        self._started = False
        await asyncio.sleep(0)

    # -- inspection -----------------------------------------------------------------------------------------
    @query
    def orders(self) -> list[dict[str, Any]]:
        return [o.public(o.key) for o in self.broker.orders.values()]

    @query
    def executions(self) -> list[dict[str, Any]]:
        keys = ("execId", "orderId", "permId", "orderRef", "symbol", "side", "shares", "price", "time", "commission")
        out = []
        for e in self.broker.executions:
            d = {k: e[k] for k in keys}
            d["clientId"] = e["clientId"]
            d["account"] = e["account"]
            d["commissionCurrency"] = e["commissionCurrency"]
            out.append(d)
        return out

    @query
    def positions(self, account: str | None = None) -> dict[str, float]:
        acct = self.broker.accounts[account or self.broker.default_account]
        return {k: p.quantity for k, p in acct.positions.items() if p.quantity}

    @query
    def fx_positions(self, account: str | None = None) -> dict[str, float]:
        """The virtual FX positions {pair: quantity of the base currency}: the sum of each pair's trades."""
        acct = self.broker.accounts[account or self.broker.default_account]
        return {k: p.quantity for k, p in acct.fx.items() if p.quantity}

    @query
    def cash(self, account: str | None = None) -> dict[str, float]:
        return dict(self.broker.accounts[account or self.broker.default_account].cash)

    @query
    def connected_client_ids(self) -> list[int]:
        return sorted(self.clients)

    @query
    def pacing_violations(self) -> int:
        return self.pacing_count


__all__ = ["Connection", "GatewayServer", "ib_time"]
