"""The broker loop: one thread we own, running one asyncio loop for the life of the process.

The ib_insync `IB` object, its connection, the async Firestore client and every intent handler live here and are
touched from nowhere else (why: docs/decisions.md, record 1). Other threads hand work over with `submit`
(`run_coroutine_threadsafe`) or `call` (`call_soon_threadsafe`), never by calling into these objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BrokerLoop:
    """The broker thread and its loop: `start` once, hand work over with `submit`/`run`/`call`, `stop` at exit.

    `responsive` is the liveness probe: a loop blocked by a synchronous call would fail it.
    """

    def __init__(self, name: str = "broker-loop") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the broker loop is not running")
        return self._loop

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the broker loop is already started")
        # ib_insync's eventkit asks for the main thread's loop when first imported; importing it here, on the caller's
        # thread, keeps that from happening inside the broker thread (where it raises "no current event loop").
        import ib_insync  # noqa: F401

        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        # ib_insync finds its loop with get_event_loop_policy().get_event_loop(), so this thread must own it.
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Runs a coroutine on the broker loop; the returned future may be waited on from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Blocking form of submit, for threads other than the broker thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("BrokerLoop.run() called from the broker thread would deadlock; await instead")
        return self.submit(coro).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def responsive(self, timeout: float = 1.0) -> bool:
        """True when the loop runs callbacks: the liveness probe (a blocked loop would fail it)."""
        if self._loop is None or not self._loop.is_running():
            return False
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed
            return False
        return answered.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
