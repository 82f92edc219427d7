"""The gateway's state that every concern shares: scenario, clock, instruments, broker, connections, persistence.

GatewayServer is built in layers, each a module: this core, then account.py, marketdata.py, orders.py and
faults.py (each layer uses the ones before it), with dispatch.py beside them and server.py on top.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import saved_state
from .broker import Broker
from .clock import SimClock
from .market import Instrument, PriceWalk
from .protocol import ContractRequest
from .scenario import Scenario
from .simorder import Listener

REQUESTS_KEPT = 100_000  # requests_received(): enough for a test or a bench run, bounded for a long-running ibsim

if TYPE_CHECKING:
    from .connection import Connection
    from .server import GatewayServer

log = logging.getLogger("ibsim")


class GatewayCore:
    """State shared by the layers of GatewayServer; all of it lives on the server's event loop."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        host: str = "127.0.0.1",
        port: int = 4002,
        state_file: str | Path | None = None,
    ) -> None:
        self.scenario = scenario or Scenario.default()
        self.clock = SimClock(self.scenario.clockStart)  # the one source of "now"
        self.host = host
        self.port = port
        self.state_file = Path(state_file) if state_file else None
        self.instruments: dict[str, Instrument] = {s.key: Instrument(s) for s in self.scenario.instruments}
        self._by_symbol: dict[str, list[Instrument]] = {}
        self._by_con_id: dict[int, Instrument] = {}
        for inst in self.instruments.values():
            self._by_symbol.setdefault(inst.symbol.upper(), []).append(inst)
            self._by_con_id[inst.conId] = inst
        # The full server (the top layer) implements Listener: the broker reports orders, fills and state to it.
        self.broker = Broker(
            self.scenario, self.instruments, cast(Listener, self), asyncio.get_running_loop, self.clock
        )
        self.connections: set[Connection] = set()
        self.clients: dict[int, Connection] = {}
        self.frozen = False
        lat = self.scenario.latency
        self.latency = (lat.get("fixed", 0.0), lat.get("jitter", 0.0))
        self.rng = random.Random(self.scenario.seed)
        self.walk = PriceWalk(self.scenario.seed)
        self.pacing_max = int(self.scenario.pacing.get("maxPerSecond", 50))
        self.pacing_count = 0
        after = self.scenario.pacing.get("disconnectAfter")
        self.pacing_disconnect_after = int(after) if after else None
        self.pacing_disconnects = 0
        self.current_time_gap = float(self.scenario.pacing.get("currentTimeSeconds", 1.0))
        self.closing_after_connect_clock: float | None = None  # fault close_after_connect_clock: its delay
        self.connect_cost = dict(self.scenario.connectCost)
        # message id -> delay of the next such request (stall_request); None: never answered
        self.stalls: dict[int, float | None] = {}
        # (clientId, TWS request name) of every request received, oldest first, the last REQUESTS_KEPT of them
        self.requests_log: collections.deque[tuple[int, str]] = collections.deque(maxlen=REQUESTS_KEPT)
        self.protocol_mismatches = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._save_handle: asyncio.TimerHandle | None = None
        self._started = False
        self.started_at = 0.0
        if self.state_file and self.state_file.exists():
            try:
                saved_state.restore(self.broker, json.loads(self.state_file.read_text()))
                log.info("state loaded from %s", self.state_file)
                asyncio.get_running_loop().call_soon(self.broker.time_passed)  # what ended while it was down
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("state file %s unreadable, starting fresh: %s", self.state_file, e)

    # -- sockets and tasks ----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        from .connection import Connection

        server = cast("GatewayServer", self)  # a Connection talks to the whole server: dispatch, faults, clock
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(server), self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, conn: Connection) -> None:
        """A socket closed: its client id is free again."""
        self.connections.discard(conn)
        if conn.client_id is not None and self.clients.get(conn.client_id) is conn:
            del self.clients[conn.client_id]

    # -- instruments ----------------------------------------------------------------------------------------
    def _instrument(self, symbol: str) -> Instrument:
        """An instrument as tests name it: SPY, EUR.USD or EURUSD, ES."""
        inst = self.instruments.get(symbol)
        if inst is None and len(symbol) == 6 and symbol.isalpha():
            inst = self.instruments.get(f"{symbol[:3]}.{symbol[3:]}")
        if inst is None:
            raise KeyError(f"unknown instrument {symbol!r}")
        return inst

    def resolve(self, c: ContractRequest, include_expired: bool = False) -> list[Instrument]:
        """The instruments a client's contract describes (by conId, else by symbol and the fields it gives). A future
        past its last trade date is no longer listed (IB answers 200), unless asked for expired contracts too."""
        if c.conId:
            inst = self._by_con_id.get(c.conId)
            candidates = [inst] if inst is not None else []
        else:
            candidates = self._by_symbol.get(c.symbol.upper(), []) if c.symbol else list(self.instruments.values())
        now = self.clock.now()
        return [i for i in candidates if i.matches(c) and (include_expired or not i.expired(now))]

    # -- persistence (--state) ------------------------------------------------------------------------------
    def state_changed(self) -> None:
        if self.state_file is None or self._save_handle is not None:
            return
        self._save_handle = asyncio.get_running_loop().call_later(0.2, self._save_now)

    def _save_now(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            tmp.write_text(json.dumps(saved_state.dump(self.broker), indent=1, sort_keys=True))
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("cannot write state file %s: %s", self.state_file, e)
