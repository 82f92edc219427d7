"""ThreadedGateway: a GatewayServer on its own event loop in a daemon thread, for synchronous callers."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .scenario import Scenario
from .server import GatewayServer

T = TypeVar("T")
CALL_TIMEOUT = 10.0


class ThreadedGateway:
    """Runs a GatewayServer in a background thread; every method hands its work to the server's loop and waits."""

    def __init__(
        self,
        port: int = 0,
        scenario: Scenario | None = None,
        host: str = "127.0.0.1",
        state_file: str | Path | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._scenario = scenario
        self._state_file = state_file
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.server: GatewayServer | None = None
        self.port = port
        self.start()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> None:
                self.server = GatewayServer(self._scenario, self.host, self._requested_port, self._state_file)
                await self.server.start()

            try:
                loop.run_until_complete(boot())
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"ibsim-{self._requested_port}", daemon=True)
        self._thread.start()
        ready.wait(CALL_TIMEOUT)
        if failure:
            self._thread = None
            raise failure[0]
        assert self.server is not None
        self.port = self.server.port

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        server = self.server
        if server is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(server.stop(), self._loop).result(CALL_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        self._thread = None

    def __enter__(self) -> ThreadedGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs fn(*args, **kwargs) on the server loop and returns its result (awaited if it is a coroutine)."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("the gateway is stopped")

        async def run() -> Any:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT)

    def _srv(self) -> GatewayServer:
        assert self.server is not None
        return self.server

    # -- faults ---------------------------------------------------------------------------------------------
    def drop_connections(self) -> int:
        return self.call(self._srv().drop_connections)

    def refuse_connections(self, seconds: float) -> None:
        self.call(self._srv().refuse_connections, seconds)

    def set_latency(self, fixed: float = 0.0, jitter: float = 0.0) -> None:
        self.call(self._srv().set_latency, fixed, jitter)

    def reject_next_order(self, code: int = 201, message: str = "Order rejected - reason:Simulated rejection") -> None:
        self.call(self._srv().reject_next_order, code, message)

    def hold_fills(self, on: bool = True) -> None:
        self.call(self._srv().hold_fills, on)

    def hold_commissions(self, on: bool = True) -> None:
        self.call(self._srv().hold_commissions, on)

    def set_max_fill_size(self, size: float) -> None:
        self.call(self._srv().set_max_fill_size, size)

    def freeze(self, on: bool = True) -> None:
        self.call(self._srv().freeze, on)

    def send_error(self, code: int, message: str = "", req_id: int = -1) -> None:
        self.call(self._srv().send_error, code, message, req_id)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.call(self._srv().restart, down_seconds)

    def set_price(self, symbol: str, price: float) -> None:
        self.call(self._srv().set_price, symbol, price)

    def set_position(
        self, symbol: str, quantity: float, avg_cost: float | None = None, account: str | None = None
    ) -> None:
        self.call(self._srv().set_position, symbol, quantity, avg_cost, account)

    def set_bars(self, symbol: str, bars: list[dict[str, Any]]) -> None:
        self.call(self._srv().set_bars, symbol, bars)

    def set_cash(self, currency: str, amount: float, account: str | None = None) -> None:
        self.call(self._srv().set_cash, currency, amount, account)

    def roll_day(self) -> None:
        self.call(self._srv().roll_day)

    def set_time(self, when: dt.datetime | str) -> None:
        self.call(self._srv().set_time, when)

    def advance_time(self, seconds: float) -> None:
        self.call(self._srv().advance_time, seconds)

    def now(self) -> dt.datetime:
        return self.call(self._srv().now)

    # -- inspection -----------------------------------------------------------------------------------------
    def orders(self) -> list[dict[str, Any]]:
        return self.call(self._srv().orders)

    def executions(self) -> list[dict[str, Any]]:
        return self.call(self._srv().executions)

    def positions(self, account: str | None = None) -> dict[str, float]:
        return self.call(self._srv().positions, account)

    def cash(self, account: str | None = None) -> dict[str, float]:
        return self.call(self._srv().cash, account)

    def market_data_types(self) -> list[tuple[int, int]]:
        return self.call(self._srv().market_data_types)

    def connected_client_ids(self) -> list[int]:
        return self.call(self._srv().connected_client_ids)

    def pacing_violations(self) -> int:
        return self.call(self._srv().pacing_violations)
