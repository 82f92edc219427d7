"""ThreadedGateway: a GatewayServer on its own event loop in a daemon thread, for synchronous callers.

Its fault, control and inspection methods are not written here: each is made from the GatewayServer method of
the same name and signature (those marked @fault or @query, see ibsim/controls.py) and hands the call to the loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .controls import controls
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

    if TYPE_CHECKING:
        # The twins below are made at import; this tells type checkers they exist (their results are Any).
        def __getattr__(self, name: str) -> Any: ...


def _twin(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def twin(self: ThreadedGateway, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self._srv(), name), *args, **kwargs)

    return twin


# Every fault, control and query of GatewayServer (its @fault and @query marks), as a thread-safe twin.
for _name in controls(GatewayServer):
    setattr(ThreadedGateway, _name, _twin(_name, getattr(GatewayServer, _name)))
