"""The designs the benchmark compares, each a Pub/Sub consumer of its own project on the same emulator.

    floor      the callback publishes a reply at once: Pub/Sub alone, no broker work
    per_call   baseline (a): a fresh connection per intent on a fresh event loop (asyncio.run per request)
    polled     baseline (b): a worker thread with one connection, fed by a queue.Queue, results polled
Ours is the real consumer process (bench.stack). Each does the work of `summary`: the same four requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
from ib_insync import IB, ExecutionFilter

POLL_INTERVAL = 0.01
# The seeded account makes every connect download about 11 s of start-up state (bench.stack.CONNECT_COST).
CONNECT_TIMEOUT = 60.0


async def summary_calls(ib: IB) -> dict[str, Any]:
    values, positions, trades, fills = await asyncio.gather(
        ib.accountSummaryAsync(),
        ib.reqPositionsAsync(),
        ib.reqAllOpenOrdersAsync(),
        ib.reqExecutionsAsync(ExecutionFilter()),
    )
    return {"values": len(values), "positions": len(positions), "openOrders": len(trades), "fills": len(fills)}


class Design:
    """A callback-driven consumer: subclasses say what happens between a message and its reply."""

    name = "design"

    def __init__(self, project: str, gateway_port: int) -> None:
        self.project = project
        self.gateway_port = gateway_port
        self.publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.001)
        )
        self.subscriber = pubsub_v1.SubscriberClient()
        self.reply_topic = self.publisher.topic_path(project, "intent-replies")
        self._stream: Any = None

    def start(self) -> None:
        path = self.subscriber.subscription_path(self.project, "intents-consumer")
        self._stream = self.subscriber.subscribe(
            path,
            self._callback,
            flow_control=pubsub_v1.types.FlowControl(max_messages=20, max_duration_per_lease_extension=10),
            scheduler=pubsub_v1.subscriber.scheduler.ThreadScheduler(concurrent.futures.ThreadPoolExecutor(20)),
        )

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.subscriber.close()
        self.publisher.stop()

    def _callback(self, message: Any) -> None:
        started = time.perf_counter()
        result = self.work(message)
        reply = {
            "messageId": message.message_id,
            "status": "ok",
            "result": result,
            "durationMs": (time.perf_counter() - started) * 1000,
        }
        self.publisher.publish(self.reply_topic, json.dumps(reply).encode()).result()
        message.ack()

    def work(self, message: Any) -> dict[str, Any]:
        raise NotImplementedError


class Floor(Design):
    name = "floor (Pub/Sub echo)"

    def work(self, message: Any) -> dict[str, Any]:
        return {}


class PerCall(Design):
    """asyncio.run per request: a new loop, a new IB, a new connection, every time."""

    name = "baseline (a): connection per intent"
    _ids = itertools.count(100)

    def work(self, message: Any) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            ib = IB()
            await ib.connectAsync("127.0.0.1", self.gateway_port, clientId=next(self._ids), timeout=CONNECT_TIMEOUT)
            try:
                return await summary_calls(ib)
            finally:
                ib.disconnect()

        return asyncio.run(run())


class Polled(Design):
    """One worker thread with a persistent connection; callbacks queue work and poll for the result."""

    name = "baseline (b): queue + polling"

    def __init__(self, project: str, gateway_port: int) -> None:
        super().__init__(project, gateway_port)
        self._work: queue.Queue[tuple[str, Callable[[IB], Any]] | None] = queue.Queue()
        self._results: dict[str, Any] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._worker, name="polled-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(CONNECT_TIMEOUT)
        super().start()

    def stop(self) -> None:
        super().stop()
        self._work.put(None)
        self._thread.join(10)

    def _worker(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ib = IB()
        loop.run_until_complete(ib.connectAsync("127.0.0.1", self.gateway_port, clientId=90, timeout=CONNECT_TIMEOUT))
        self._ready.set()
        while (item := self._work.get()) is not None:
            key, job = item
            self._results[key] = loop.run_until_complete(job(ib))
        ib.disconnect()
        loop.close()

    def work(self, message: Any) -> dict[str, Any]:
        self._work.put((message.message_id, summary_calls))
        while message.message_id not in self._results:
            time.sleep(POLL_INTERVAL)
        return self._results.pop(message.message_id)


DESIGNS: list[type[Design]] = [Floor, PerCall, Polled]
