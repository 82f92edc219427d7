"""The consumer process: wires transport, dispatch and broker together and runs them until told to stop.

Threads, and what each may touch:
    control (the caller of `run`, normally main)   starts/stops the Pub/Sub stream, handles signals
    broker loop                                     IB, Firestore, every intent handler (consumer.broker.loop)
    Pub/Sub callback pool                           decode, validate, hand over, wait (consumer.intake)
    health                                          reads the status snapshot only
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

from consumer.accounts import AccountDirectory
from consumer.broker.gateway import State
from consumer.broker.loop import BrokerLoop
from consumer.config import Settings
from consumer.dispatch import AccountDispatchers
from consumer.health import HealthServer
from consumer.intake import Intake, RequestDecoder
from consumer.intents import builtin_intents
from consumer.intents.base import Intent
from consumer.logs import get_logger
from consumer.metrics import Metrics
from consumer.recovery import StrandedRequests
from consumer.schedules import job_accounts, job_intents
from consumer.schemas import Schemas
from consumer.services import Services
from consumer.transport.delivery_watch import DeliveryWatch
from consumer.transport.publishing import make_publisher
from consumer.transport.subscriber import IntentSubscriber

log = get_logger(__name__)

# Not settings: internal margins an operator has no reason to tune (the bounds they do tune are in Settings).
# The callback's own bound on waiting for an intent: past the intent timeout, plus time to store and reply.
SETTLE_MARGIN_SECONDS = 60.0
# Pause before reopening a streaming pull that ended: the client library's own retries have run out by then.
STREAM_RESTART_SECONDS = 2.0
# The exit code after a task the service needs failed: consumer.cli's EXIT_FAILED (the CLI imports this module late).
EXIT_TASK_FAILED = 1


@dataclass
class Status:
    """What the health endpoint and `consumer status` see; written by the control thread and gateway listener."""

    gateway: str = State.CONNECTING.value
    subscribed: bool = False
    accepting: bool = False  # the gateway is connected: requests go to the broker loop rather than wait
    stopping: bool = False
    started_at: float = field(default_factory=time.time)

    def as_dict(self, settings: Settings) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "subscribed": self.subscribed,
            "accepting": self.accepting,
            "stopping": self.stopping,
            "tradingMode": settings.trading_mode,
            "accounts": list(settings.accounts),
            "defaultDeployment": settings.default_deployment,
            "allowLive": settings.allow_live,  # the deployment's ceiling: config/live can only tighten it
            "leverageCapMax": settings.leverage_cap_max,
            "clientId": settings.ib_client_id,
            "uptimeSeconds": round(time.time() - self.started_at, 1),
        }


@dataclass(frozen=True, slots=True)
class StopRequested:
    """A signal or the command asked the process to stop, or a task it needs failed; `reason` is logged, and
    `exit_code` is the process's: non-zero after a failure, so a supervisor that restarts only on one does."""

    reason: str
    exit_code: int = 0


@dataclass(frozen=True, slots=True)
class GatewayChanged:
    """The gateway's connection state changed: intake opens on CONNECTED and is held otherwise."""

    state: State


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The streaming pull ended with an error: reopened after a pause (`RestartStream`)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class RestartStream:
    """The pause after a stream failure is over: the stream is reopened, whatever the gateway's state (intake holds
    what needs the gateway, as through any outage)."""


# What the control thread reacts to, from signals, the gateway's listener and the subscriber.
ControlEvent = StopRequested | GatewayChanged | StreamFailed | RestartStream


class Consumer:
    """The running consumer: one per process, started by `consumer serve` (consumer.cli) and by the tests.

    `run` starts the broker loop and builds the `Services` on it, connects the gateway, opens the Pub/Sub stream
    once the gateway is first connected, and serves until `request_stop` (a signal, or a test). Stopping drains:
    the stream closes, intents in flight finish or are aborted after `shutdown_grace`, the books' worker and the
    gateway stop. The control thread alone changes `status`; the health endpoint only reads it.
    """

    def __init__(self, settings: Settings, intents: dict[str, Intent] | None = None) -> None:
        self.settings = settings
        self.status = Status()
        self._intents = intents or builtin_intents()
        self.metrics = Metrics(self._intents)
        self.loop = BrokerLoop()
        self._schemas = Schemas()
        self._events: queue.SimpleQueue[ControlEvent] = queue.SimpleQueue()
        self._intake_open = threading.Event()
        self._intake_stopping = threading.Event()
        self.services: Services | None = None
        self.dispatcher: AccountDispatchers | None = None
        self.health: HealthServer | None = None
        self.delivery_watch: DeliveryWatch | None = None
        self._subscriber: IntentSubscriber | None = None
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber_client: pubsub_v1.SubscriberClient | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Serves until `request_stop`; returns the exit code: 0, or EXIT_TASK_FAILED when a task it needs failed."""
        self.start()
        try:
            code = self._control()
        finally:
            self._shutdown()
        return code

    def request_stop(self, reason: str = "requested") -> None:
        """Thread- and signal-safe."""
        self._events.put(StopRequested(reason))

    def _stop_if_it_fails(self, name: str, task: concurrent.futures.Future[None]) -> None:
        """A task the service cannot work without (the gateway's connect-and-reconnect loop) that ends in an error
        stops the process, to be restarted (the launcher, systemd): left dead, /livez said 200 while every
        request was held or failed for good."""

        def done(future: concurrent.futures.Future[None]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.critical("a task the service needs failed; stopping", task=name, error=repr(future.exception()))
                # Exit non-zero: systemd's Restart=on-failure (infra cloud-init, a consumer run outside the image)
                # restarts only then, and a clean exit hid the failure from whoever reads the status.
                self._events.put(StopRequested(f"{name} task failed", EXIT_TASK_FAILED))

        task.add_done_callback(done)

    def start(self) -> None:
        s = self.settings
        log.info("consumer starting", **{k: v for k, v in s.describe().items() if k != "log_format"})
        directory = AccountDirectory.from_settings(s)  # before anything starts: a bad accounts file stops here
        self.loop.start()
        self._publisher = make_publisher()
        self.services = self.loop.run(self._build_services())
        self.dispatcher = AccountDispatchers(self.services, self._intents)
        self.services.gateway.add_listener(lambda state: self._events.put(GatewayChanged(state)))
        self._stop_if_it_fails("gateway", self.loop.submit(self.services.gateway.run()))
        for view in self.services.accounts.values():
            self.loop.submit(StrandedRequests(view, s.stranded_after).run())
        self.loop.submit(self._heartbeat_log(s.heartbeat_log_interval))

        decoder = RequestDecoder(
            self._schemas,
            self._intents,
            ZoneInfo(s.schedule_time_zone),
            job_intents(),
            directory=directory,
            schedule_accounts=job_accounts(),
        )
        intake = Intake(
            decoder,
            self.dispatcher,
            self.loop,
            wait_limit=s.intent_timeout + SETTLE_MARGIN_SECONDS,
            open_=self._intake_open,
            stopping=self._intake_stopping,
            max_delivery_attempts=s.max_delivery_attempts,
        )
        self._subscriber_client = pubsub_v1.SubscriberClient()
        self._subscriber = IntentSubscriber(
            self._subscriber_client,
            self._subscriber_client.subscription_path(s.project, s.intents_subscription),
            intake,
            max_messages=s.max_messages,
            max_lease_seconds=s.max_lease_duration,
            lease_extension_seconds=s.lease_extension,
            on_failure=lambda error: self._events.put(StreamFailed(error)),
            watch=self._delivery_watch(),
        )
        if s.health_port:
            self.health = HealthServer(s.health_host, s.health_port, self._live, self._ready, self.metrics.snapshot)
            self.health.start()

    async def _heartbeat_log(self, interval: float) -> None:
        """One line per interval while the process lives (infra/alerts.tf: its absence alerts, and so does one
        saying the gateway is away for more than five minutes outside IB's nightly restart)."""
        while True:
            await asyncio.sleep(interval)
            log.info("heartbeat", gateway=self.status.gateway, accepting=self.status.accepting)

    def _delivery_watch(self) -> DeliveryWatch | None:
        s = self.settings
        if not s.delivery_probe:
            return None
        publisher, topic = self._publisher, f"projects/{s.project}/topics/{s.intents_topic}"
        assert publisher is not None
        dispatcher = self.dispatcher
        assert dispatcher is not None
        self.delivery_watch = DeliveryWatch(
            # Addressed to this deployment's account: in the cloud its subscription's filter lets only that through.
            lambda data, attributes: publisher.publish(topic, data, **{**attributes, "account": s.account}),
            interval=s.delivery_probe,
            timeout=2 * s.delivery_probe,
            # No probe while the stream is closed or every flow-control slot is taken: nothing new can arrive.
            busy=lambda: not self.status.subscribed or dispatcher.in_flight >= s.max_messages,
        )
        self.delivery_watch.start()
        return self.delivery_watch

    async def _build_services(self) -> Services:
        services = Services.create(self.settings, self._schemas, self.metrics)
        services.start()
        return services

    def _control(self) -> int:
        """Opens the stream once the gateway is first connected; while it is away, requests are held, not failed.
        Returns the exit code the stop asked for."""
        assert self._subscriber is not None
        while True:
            try:
                # Timed: Linux may hand SIGTERM to any thread (gRPC's, the broker loop's), and Python runs the handler
                # only when this main thread runs again; blocked in an untimed get, an idle consumer never stopped.
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(event, StopRequested):
                log.info("stopping", reason=event.reason)
                return event.exit_code
            if isinstance(event, GatewayChanged):
                self.status.gateway = event.state.value
                if event.state is State.CONNECTED:
                    self._intake_open.set()
                    self.status.accepting = True
                    # The stream opens at the first connect and stays open through outages: reopening it after
                    # each one would hand Pub/Sub back what it had leased to us, and burn their attempts.
                    self._subscriber.start()
                    self.status.subscribed = True
                else:
                    log.warning("gateway unavailable; holding intake until it is back", state=event.state.value)
                    self._intake_open.clear()
                    self.status.accepting = False
            elif isinstance(event, StreamFailed):
                self.status.subscribed = False
                # Not a made-up GatewayChanged(CONNECTED): the gateway may have dropped meanwhile, and that reopened
                # intake and reported the consumer ready against a gateway that was down.
                threading.Timer(STREAM_RESTART_SECONDS, self._events.put, args=(RestartStream(),)).start()
            elif isinstance(event, RestartStream):
                self._subscriber.start()
                self.status.subscribed = True

    def _drain(self) -> None:
        """Stops the stream; in-flight intents finish or are aborted (and nacked) after the grace period."""
        assert self._subscriber is not None
        assert self.dispatcher is not None
        if not self._subscriber.stop(timeout=self.settings.shutdown_grace):
            log.warning(
                "in-flight intents outlasted the grace period; aborting them", in_flight=self.dispatcher.in_flight
            )
            self.loop.run(self.dispatcher.abort_all(), timeout=5)  # cancelling is immediate; 5 s is a safety bound
            self._subscriber.stop(timeout=SETTLE_MARGIN_SECONDS)

    def _shutdown(self) -> None:
        self._intake_stopping.set()  # requests held for the gateway go back to Pub/Sub
        self.status.stopping = True
        self.status.subscribed = False
        try:
            if self._subscriber is not None:
                self._drain()
            if self.services is not None:
                try:
                    self.loop.run(self.services.close(), timeout=self.settings.close_timeout)
                except (TimeoutError, concurrent.futures.TimeoutError):
                    # Bookings still queued are not lost: the sweep after the next connect books them.
                    log.warning("closing the broker connection and store timed out; exiting anyway")
        finally:
            if self._subscriber_client is not None:
                self._subscriber_client.close()
            if self._publisher is not None:
                self._publisher.stop()
            self.loop.stop()
            if self.delivery_watch is not None:
                self.delivery_watch.stop()
            if self.health is not None:
                self.health.stop()
            log.info("consumer stopped")

    # -- health ----------------------------------------------------------------------------------------------------

    def _live(self) -> tuple[bool, dict[str, Any]]:
        alive = self.loop.responsive(timeout=2.0)  # well within the image's 20 s healthcheck timeout
        return alive, {"loop": "responsive" if alive else "blocked", **self.status.as_dict(self.settings)}

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        body = self.status.as_dict(self.settings)
        ready = body["gateway"] == State.CONNECTED.value and body["subscribed"] and body["accepting"]
        ready = ready and not body["stopping"]
        stalled = self.delivery_watch.stalled() if self.delivery_watch is not None else None
        if stalled:
            body["delivery"] = f"stalled: {stalled}"
        return ready and not stalled, body
