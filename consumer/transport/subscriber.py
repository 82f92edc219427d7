"""Streaming pull on the intents subscription, with flow control and lease management.

Opened once the gateway is connected and kept open through gateway outages (consumer.intake holds requests
meanwhile, so no delivery attempt is burnt); reopened only if the stream itself fails.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.cloud.pubsub_v1.types import FlowControl

from consumer.dispatch import Settlement
from consumer.envelope import Delivery
from consumer.logs import get_logger
from consumer.transport.delivery_watch import DeliveryWatch

log = get_logger(__name__)

Handler = Callable[[Delivery], Settlement]


class IntentSubscriber:
    """The streaming pull on the intents subscription, with flow control (`max_messages`) and lease management.

    `start` opens it (once the gateway is connected) and hands each delivery to `handler` in a callback thread;
    `stop(timeout)` stops pulling and waits for in-flight callbacks, False if they outlast it. A stream that ends
    with an error calls `on_failure`; the process reopens it.
    """

    def __init__(
        self,
        client: pubsub_v1.SubscriberClient,
        subscription_path: str,
        handler: Handler,
        max_messages: int,
        max_lease_seconds: float,
        lease_extension_seconds: float = 10.0,
        on_failure: Callable[[BaseException], None] | None = None,
        watch: DeliveryWatch | None = None,
    ) -> None:
        self._client = client
        self._path = subscription_path
        self._handler = handler
        self._max_messages = max_messages
        self._max_lease = max_lease_seconds
        self._lease_extension = lease_extension_seconds
        self._future: pubsub_v1.subscriber.futures.StreamingPullFuture | None = None
        self._on_failure = on_failure
        self._watch = watch
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        future = self._future
        return future is not None and future.running()

    def start(self) -> None:
        with self._lock:
            if self.active:
                return
            # One callback thread per message in flight: each waits for its intent, so fewer threads than
            # flow-control slots would leave leased messages queueing behind waiting ones.
            executor = concurrent.futures.ThreadPoolExecutor(self._max_messages, thread_name_prefix="pubsub-callback")
            self._future = self._client.subscribe(
                self._path,
                callback=self._on_message,
                # Leases are extended in short steps (the stream ack deadline): if this process dies, Pub/Sub
                # redelivers what it held within that step, not after the client library's default minute.
                flow_control=FlowControl(
                    max_messages=self._max_messages,
                    max_lease_duration=self._max_lease,
                    max_duration_per_lease_extension=int(self._lease_extension),
                ),
                scheduler=ThreadScheduler(executor),
                await_callbacks_on_shutdown=True,
            )
            self._future.add_done_callback(self._on_stream_end)
            log.info("pulling intents", subscription=self._path, max_messages=self._max_messages)

    def stop(self, timeout: float | None = None) -> bool:
        """Stops pulling; waits for in-flight callbacks (their acks are sent). False if they outlast `timeout`."""
        with self._lock:
            future = self._future
        if future is None:
            return True
        future.cancel()
        try:
            future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            return False  # still draining; calling stop again keeps waiting
        except Exception:  # the stream's own error, already logged by _on_stream_end
            pass
        with self._lock:
            if self._future is future:
                self._future = None
        log.info("stopped pulling intents", subscription=self._path)
        return True

    def _on_message(self, message: Message) -> None:
        if self._watch is not None and self._watch.delivered(dict(message.attributes)):
            message.ack()  # a delivery probe: it proved the stream delivers, and asks for no reply
            return
        delivery = Delivery(
            message_id=message.message_id,
            data=message.data,
            attributes=dict(message.attributes),
            publish_time=message.publish_time,
            delivery_attempt=message.delivery_attempt,
        )
        settlement = self._handler(delivery)
        if settlement is Settlement.ACK:
            message.ack()
        else:
            message.nack()

    def _on_stream_end(self, future: concurrent.futures.Future[None]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("intent stream failed", error=str(error))
            with self._lock:
                if self._future is future:
                    self._future = None
            if self._on_failure is not None:
                self._on_failure(error)
