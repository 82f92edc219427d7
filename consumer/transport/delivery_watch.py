"""Notices a subscription that stopped delivering while the stream still looks healthy.

A streaming pull can stall without an error (one very large message held a Python subscriber for 140 s on the
emulator while /readyz said 200). Whenever nothing has been delivered for `interval` seconds and the consumer has
room for more, the watch publishes a probe to the intents topic and expects it back within `timeout`; until it
arrives, readiness says the delivery is stalled. A probe is acked on arrival without a reply; probes of other
consumers on the same subscription are acked the same way. In the cloud the subscription's oldest-unacked-message
age (Cloud Monitoring) tells the same story from outside; the probe works against the emulator too.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from consumer.logs import get_logger

log = get_logger(__name__)

PROBE_ATTRIBUTE = "deliveryProbe"
# google.api_core's errors that mean "never", by name: a probe they refuse was not sent.
REFUSALS = {"PermissionDenied", "NotFound", "Forbidden", "InvalidArgument"}

Publish = Callable[[bytes, dict[str, str]], "Future[Any]"]


class DeliveryWatch:
    """Thread-safe: `delivered` is called from callback threads, `check` from its own timer thread."""

    def __init__(
        self,
        publish: Publish,
        interval: float,
        timeout: float,
        busy: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self._interval = interval
        self._timeout = timeout
        self._busy = busy
        self._clock = clock
        self._lock = threading.Lock()
        self._last_delivery = clock()
        self._probe: tuple[str, float] | None = None  # (token, published at)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- from the subscriber ---------------------------------------------------------------------------------------

    def delivered(self, attributes: dict[str, str]) -> bool:
        """Records a delivery; True when it is a probe (to be acked without a reply)."""
        token = attributes.get(PROBE_ATTRIBUTE)
        with self._lock:
            self._last_delivery = self._clock()
            if token is not None and self._probe is not None and self._probe[0] == token:
                waited = self._last_delivery - self._probe[1]
                self._probe = None
                if waited > self._timeout:
                    log.warning("delivery resumed", probe_waited_s=round(waited, 1))
        return token is not None

    # -- state -------------------------------------------------------------------------------------------------------

    def stalled(self) -> str | None:
        """Why delivery looks stalled, or None."""
        with self._lock:
            if self._probe is None:
                return None
            waited = self._clock() - self._probe[1]
        if waited <= self._timeout:
            return None
        return f"a probe published {waited:.0f}s ago has not been delivered"

    # -- the timer ---------------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Publishes a probe when the subscription has been quiet for an interval and none is in flight."""
        with self._lock:
            quiet = self._clock() - self._last_delivery
            if self._probe is not None or quiet < self._interval or self._busy():
                return
            token = uuid.uuid4().hex
            self._probe = (token, self._clock())
        try:
            published = self._publish(b"", {PROBE_ATTRIBUTE: token})
        except Exception as e:  # a publish that cannot even start counts as not delivered
            log.warning("could not publish a delivery probe", error=str(e))
            return
        published.add_done_callback(lambda done: self._published(token, done))

    def _published(self, token: str, done: Future[Any]) -> None:
        """A probe Pub/Sub refused (no permission to publish, no such topic) was never sent: no stall to report for
        it, and left in flight it would have reported one for ever, since only its own delivery clears it. One that
        failed for now (Pub/Sub unreachable, a deadline) stays in flight: delivery is what that puts in doubt."""
        error = done.exception()
        if error is None or type(error).__name__ not in REFUSALS:
            if error is not None:
                log.warning("a delivery probe could not be published", error=str(error))
            return
        with self._lock:
            if self._probe is not None and self._probe[0] == token:
                self._probe = None
        log.warning("could not publish a delivery probe", error=str(error))

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(min(self._interval, self._timeout) / 2):
                self.check()
                if reason := self.stalled():
                    log.warning("intent delivery stalled", reason=reason)

        self._thread = threading.Thread(target=run, name="delivery-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
