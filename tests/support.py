"""Test helpers that talk to the real things: the emulators over their APIs, the consumer in-process or as a child."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from google.cloud import firestore, pubsub_v1

from consumer.config import Settings
from consumer.process import Consumer
from devstack.provision import Overrides, Topology, provision

if TYPE_CHECKING:
    from ibsim import Scenario

# The simulated gateway's clock in every test, so that nothing depends on the day the suite runs: a plain
# Wednesday in mid-session by default, and these days for the tests that must hold on any of them.
DEFAULT_CLOCK = "2026-06-17T11:00:00-04:00"
CLOCKS = {
    "weekday": DEFAULT_CLOCK,
    "monday-2026-11-30": "2026-11-30T10:30:00-05:00",  # the day the seeded market gave no signal
    "saturday": "2026-12-05T12:00:00-05:00",
    "thanksgiving": "2026-11-26T11:00:00-05:00",  # a US market holiday
    "month-and-year-end": "2026-12-31T15:30:00-05:00",
}
EVERY_CLOCK = {"argnames": "market_clock", "argvalues": list(CLOCKS.values()), "ids": list(CLOCKS), "indirect": True}
# The clocks of CLOCKS on which the exchanges hold a session: for tests that trade, since IB holds an order outside
# its session (ibsim's default `hours: regular`) and a fill is what they check.
TRADING_CLOCK = {
    "argnames": "market_clock",
    "argvalues": [c for name, c in CLOCKS.items() if name not in {"saturday", "thanksgiving"}],
    "ids": [name for name in CLOCKS if name not in {"saturday", "thanksgiving"}],
    "indirect": True,
}


def sim_scenario(fields: dict[str, Any] | None = None, clock: str = DEFAULT_CLOCK) -> Scenario:
    """A simulated gateway's scenario on the tests' clock (a Wednesday in session unless `clock` says): no gateway
    of the suite runs on the wall clock, whose hour would decide whether a market is open."""
    from ibsim import Scenario

    return Scenario.from_dict({"clock": {"start": clock}, **(fields or {})})


# The default ibsim scenario's account, which every consumer under test serves unless a test says otherwise.
TEST_ACCOUNT = "DU123456"
# IB's 354 text, as the gateway refuses market data the login has no subscription for.
NOT_SUBSCRIBED = (
    "Requested market data is not subscribed. Check API status by selecting the Account menu then under "
    "Management choose Market Data Subscription Manager and/or Delayed market data is not available."
)

REPLIES_SUBSCRIPTION = "intent-replies-monitor"
DEAD_LETTER_SUBSCRIPTION = "intents-dead-letter-hold"


# The subscription's ack deadline in tests: Pub/Sub's minimum (the cloud's is 60 s). A killed consumer's unacked
# messages come back after it, so tests that kill one wait at least this long; no setting shortens it further.
ACK_DEADLINE_SECONDS = 10
# Redelivery backoff in tests, cut from 10 s to the emulator's floor of 1 s: a nacked message is back within the max.
# Asked for less, the emulator raises it to 1 s anyway and logs four lines each time it computes a backoff (68,000
# times a suite run: 34 MB, relayed line by line by gcloud's wrapper at ~16 s of CPU for the burst test alone).
MIN_BACKOFF_SECONDS = MAX_BACKOFF_SECONDS = 1.0
# How long "no further reply came" must hold for a test to conclude there is none: longer than a nacked message's
# redelivery backoff (plus the handler's run). TEST_QUIET_SECONDS lengthens it, e.g. on a loaded machine.
QUIET = float(os.environ.get("TEST_QUIET_SECONDS", str(MAX_BACKOFF_SECONDS + 0.5)))
# The gateway outage of a daily restart, against the consumer's reconnect backoff cap cut from 15 s: longer than the
# cap, so its retries reach it and go on. TEST_LONG_OUTAGE_SECONDS=60 TEST_RECONNECT_BACKOFF_MAX_SECONDS=15 give the
# real restart's minute and the real cap.
RECONNECT_BACKOFF_MAX_SECONDS = float(os.environ.get("TEST_RECONNECT_BACKOFF_MAX_SECONDS", "2"))
LONG_OUTAGE_SECONDS = float(os.environ.get("TEST_LONG_OUTAGE_SECONDS", "6"))
# After a stream is cancelled and reopened (a consumer restarted in the same project), the emulator can hand the
# next message to the dead stream until its lease runs out (seconds to a minute and more); tests that restart the
# stream wait for that, real Pub/Sub doesn't.
STREAM_RESTART_WAIT = 150.0


TEST_OVERRIDES = Overrides(
    minimum_backoff_seconds=MIN_BACKOFF_SECONDS,
    maximum_backoff_seconds=MAX_BACKOFF_SECONDS,
    ack_deadline_seconds=ACK_DEADLINE_SECONDS,
)


def provision_for_tests(project: str) -> None:
    """The declared topology, with the ack deadline and redelivery backoff above."""
    provision(project, overrides=TEST_OVERRIDES)


# A subscription on the intents topic for the consumer started after a kill or a stop.
STANDBY = "intents-consumer-standby"


def another_intents_subscription(project: str, name: str) -> str:
    """A second subscription on the intents topic, declared like intents-consumer.

    After a consumer stops or is killed, the emulator can hand messages to its closed stream for minutes, and a seek
    does not stop it (real Pub/Sub redelivers once the ack deadline passes). So the consumer started after it pulls
    from a subscription of its own: created before the messages, it holds its own copy of each, and hands it to the
    new consumer as a redelivery would: the same message id, a claim its dead owner left running.
    """
    spec = Topology.load().subscriptions["intents-consumer"]
    provision(project, Topology(topics={}, subscriptions={name: spec}), overrides=TEST_OVERRIDES)
    return name


def clock_seen(bus: Bus, gateway: Any, **address: str) -> None:
    """Waits until the consumer keeps the time the simulated gateway has now. A test that moves the gateway's clock
    (set_time, roll_day, advance_time) calls it before its next intent: the consumer reads the gateway's time from
    its answers to current-time requests (heartbeat, ping), and no real gateway's clock jumps between two of them.
    `address`: the ping's attributes (account=...) where the gateway is another deployment's."""
    target = gateway.now() - timedelta(seconds=2)

    def seen() -> bool:
        reply = bus.reply_to(bus.publish({"intent": "ping", "params": {}}, **address))
        return datetime.fromisoformat(reply["result"]["gatewayTime"]) >= target

    wait_for(seen, what="the consumer to read the gateway's new time")


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    interval: float = 0.05,
    ib: Any = None,
) -> Any:
    """Polls a condition on the system under test; fails the test with `what` if it never holds.

    With `ib` (an ib_insync IB on this thread), ib_insync processes its messages between polls instead of the
    thread sleeping, so the predicate sees what the gateway sent; a dropped socket leaves the verdict to it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if ib is None:
            time.sleep(interval)
        else:
            with contextlib.suppress(ConnectionError):
                ib.sleep(interval)


def file_written(path: Any, process: Any) -> Callable[[], bool]:
    """For wait_for: a file exists and is not empty; fails at once if `process` (a Popen) exited meanwhile."""

    def check() -> bool:
        assert process.poll() is None, f"the process exited early: {process.communicate()}"
        return path.exists() and path.stat().st_size > 0

    return check


def ensure_loop() -> None:
    """ib_insync's sync API uses the thread's current event loop; async tests may have left none behind."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if loop.is_closed():
            raise RuntimeError
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


class Bus:
    """Publishes intents and collects replies and dead letters, through the Pub/Sub emulator."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        self.intents_topic = self.publisher.topic_path(project, "intents")
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reply_attributes: list[dict[str, str]] = []
        self._dead: queue.Queue[pubsub_v1.subscriber.message.Message] = queue.Queue()
        self._streams: list[Any] = []
        self.received: list[dict[str, Any]] = []

    def __enter__(self) -> Bus:
        def on_reply(message: Any) -> None:
            self._reply_attributes.append(dict(message.attributes))
            self._replies.put(json.loads(message.data))
            message.ack()

        def on_dead(message: Any) -> None:
            self._dead.put(message)
            message.ack()

        for name, callback in ((REPLIES_SUBSCRIPTION, on_reply), (DEAD_LETTER_SUBSCRIPTION, on_dead)):
            path = self.subscriber.subscription_path(self.project, name)
            self._streams.append(self.subscriber.subscribe(path, callback))
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in self._streams:
            stream.cancel()
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.result(timeout=10)
        self.subscriber.close()
        self.publisher.transport.close()

    # -- publishing ------------------------------------------------------------------------------------------

    def publish(self, body: dict[str, Any] | bytes | str, **attributes: str) -> str:
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        return self.publisher.publish(self.intents_topic, data, **attributes).result(timeout=30)

    # -- replies ---------------------------------------------------------------------------------------------

    def _drain(self, timeout: float) -> dict[str, Any] | None:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        self.received.append(reply)
        return reply

    def reply_to(self, message_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first reply to a message, waiting for it if needed."""
        deadline = time.monotonic() + timeout
        while True:
            for reply in self.received:
                if reply["messageId"] == message_id:
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply to message {message_id} within {timeout}s; got {self.received}")
            self._drain(min(remaining, 0.5))

    def replies_to(self, message_id: str, quiet: float = QUIET) -> list[dict[str, Any]]:
        """Every reply to a message, once the first has arrived and no more came for `quiet` seconds."""
        self.reply_to(message_id)
        while self._drain(quiet) is not None:
            pass
        return [r for r in self.received if r["messageId"] == message_id]

    def wait_replies(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.received)} of {count} replies within {timeout}s")
            self._drain(min(remaining, 0.5))
        return list(self.received)

    def replies_to_all(self, message_ids: list[str], timeout: float = 120.0, quiet: float = QUIET) -> dict[str, list]:
        """Every reply to each of these messages, once each has one and no more came for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        while not set(message_ids) <= {r["messageId"] for r in self.received}:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = set(message_ids) - {r["messageId"] for r in self.received}
                raise AssertionError(f"no reply to {len(missing)} of {len(message_ids)} messages within {timeout}s")
            self._drain(min(remaining, 0.5))
        self.settle(quiet)
        return {m: [r for r in self.received if r["messageId"] == m] for m in message_ids}

    def settle(self, quiet: float = QUIET) -> list[dict[str, Any]]:
        """All replies so far, after `quiet` seconds without a new one."""
        while self._drain(quiet) is not None:
            pass
        return list(self.received)

    @property
    def reply_attributes(self) -> list[dict[str, str]]:
        return list(self._reply_attributes)

    def dead_letter(self, timeout: float = 30.0) -> Any:
        try:
            return self._dead.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no dead letter within {timeout}s") from None


def firestore_client(project: str) -> firestore.Client:
    return firestore.Client(project=project)


def account_document(project: str, account: str = TEST_ACCOUNT) -> firestore.DocumentReference:
    return firestore_client(project).collection("accounts").document(account)


def activity(project: str, account: str = TEST_ACCOUNT, **where: Any) -> list[dict[str, Any]]:
    docs = [d.to_dict() for d in account_document(project, account).collection("activity").stream()]
    return [d for d in docs if all(d.get(k) == v for k, v in where.items())]


def settings_for_tests(project: str, gateway_port: int, **overrides: Any) -> Settings:
    base = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": project,
            "IB_HOST": "127.0.0.1",
            "IB_PORT": str(gateway_port),
            "IB_CLIENT_ID": "1",
            "IB_ACCOUNT": TEST_ACCOUNT,
            "HEALTH_PORT": "0",
            "HEARTBEAT_SECONDS": "1",
            "IB_CONNECT_TIMEOUT": "5",
            "RECONNECT_BACKOFF_MAX_SECONDS": str(RECONNECT_BACKOFF_MAX_SECONDS),
            "SHUTDOWN_GRACE_SECONDS": "20",
            "CLAIM_LEASE_SECONDS": "3",
            "LOG_FORMAT": "console",
        }
    )
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass
class ConsumerUnderTest:
    """The real consumer service, in this process, on its own threads (the broker loop among them)."""

    service: Consumer
    thread: threading.Thread

    @classmethod
    def start(
        cls,
        project: str,
        gateway_port: int,
        wait_ready: bool = True,
        intents: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ConsumerUnderTest:
        service = Consumer(settings_for_tests(project, gateway_port, **overrides), intents=intents)
        thread = threading.Thread(target=service.run, name="consumer-under-test", daemon=True)
        thread.start()
        c = cls(service, thread)
        if wait_ready:
            c.wait_ready()
        return c

    def wait_ready(self, timeout: float = 30.0) -> None:
        status = self.service.status
        wait_for(lambda: status.subscribed and status.accepting, timeout, "the consumer to connect and subscribe")

    def stop(self, timeout: float = 60.0) -> None:
        if self.thread.is_alive():
            self.service.request_stop("test teardown")
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "consumer did not stop"


# -- Firestore state -------------------------------------------------------------------------------------------------


def trading_config(**overrides: Any) -> dict[str, Any]:
    """A paper config with trading on and a share for the strategies tests use."""
    config: dict[str, Any] = {
        "tradingEnabled": True,
        "leverageCap": 1.0,
        "exposure": {"overall": 1.0, "strategies": {"dummy": 0.5}},
        "orderDefaults": {"orderType": "MKT", "algo": "Adaptive", "adaptivePriority": "Normal", "tif": "DAY"},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(project: str, mode: str = "paper", account: str = TEST_ACCOUNT, **overrides: Any) -> dict[str, Any]:
    document = trading_config(**overrides)
    account_document(project, account).collection("config").document(mode).set(document)
    return document


def mode_document(project: str, mode: str = "paper", account: str = TEST_ACCOUNT) -> firestore.DocumentReference:
    """accounts/{account}/tradingModes/{mode}: where an account's books in one mode live."""
    return account_document(project, account).collection("tradingModes").document(mode)


def mode_collection(project: str, name: str, mode: str = "paper", account: str = TEST_ACCOUNT) -> list[dict[str, Any]]:
    ref = mode_document(project, mode, account).collection(name)
    return [{"_id": d.id, **(d.to_dict() or {})} for d in ref.stream()]


def delete_mode_documents(project: str, mode: str = "paper", account: str = TEST_ACCOUNT) -> int:
    """What a restore to an empty backup or a careless cleanup does: every document of the mode (claims, orders,
    fills, holdings...) is gone; the config stays. Returns how many were deleted."""
    deleted = 0
    for collection in mode_document(project, mode, account).collections():
        for doc in collection.stream():
            doc.reference.delete()
            deleted += 1
    return deleted


def holdings(project: str, mode: str = "paper", account: str = TEST_ACCOUNT) -> dict[str, dict[str, float]]:
    """{strategy: {symbol: quantity}}"""
    out: dict[str, dict[str, float]] = {}
    for doc in mode_collection(project, "holdings", mode, account):
        positions = {p["symbol"]: p["quantity"] for p in doc.get("positions", {}).values() if p.get("quantity")}
        if positions:
            out[doc["_id"]] = positions
    return out


def booked_totals(project: str, mode: str = "paper") -> dict[str, float]:
    """Sum over every book (strategies and unallocated) per symbol."""
    totals: dict[str, float] = {}
    for positions in holdings(project, mode).values():
        for symbol, quantity in positions.items():
            totals[symbol] = totals.get(symbol, 0.0) + quantity
    return {s: q for s, q in totals.items() if q}


def allocation(
    weights: dict[str, float], dry_run: bool = False, params: dict[str, Any] | None = None, **body: Any
) -> dict[str, Any]:
    """An allocation intent of the dummy strategy to these weights; `params` adds or replaces intent params,
    `body` adds envelope fields (idempotencyKey, expiresAt, ignoreMarketHours...)."""
    intent_params = {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": weights}}, **(params or {})}
    envelope: dict[str, Any] = {"intent": "allocation", "params": intent_params, **body}
    if dry_run:
        envelope["dryRun"] = True
    return envelope


SIGNAL_PARAMS = {"symbols": ["SPY", "QQQ", "IWM"], "lookback": 5}


def trading_days_until(now: datetime, count: int) -> list[date]:
    """The last `count` weekdays up to and including the New York date of `now`, oldest first."""
    day = now.astimezone(ZoneInfo("America/New_York")).date()
    days: list[date] = []
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= timedelta(days=1)
    return days[::-1]


def trending_bars(days: list[date], start: float, step: float) -> list[dict[str, Any]]:
    """Daily bars whose close moves by `step` a day: above its moving average when rising, below when falling."""
    bars = []
    for n, day in enumerate(days):
        close = start + step * n
        bars.append({"date": day.isoformat(), "open": close, "high": close + 1, "low": close - 1, "close": close,
                     "volume": 1_000_000})  # fmt: skip
    return bars


def long_signal(bus: Bus, gateway: Any) -> tuple[str, float]:
    """Gives the simulated market a history in which testsignalgenerator holds SPY long and QQQ and IWM flat (SPY
    rising, the others falling, dated back from the gateway's clock), checks with a dry run that the strategy sees
    exactly that, and returns SPY with its weight."""
    days = trading_days_until(gateway.now(), 12)
    gateway.set_bars("SPY", trending_bars(days, 500.0, 1.0))
    gateway.set_bars("QQQ", trending_bars(days, 450.0, -1.0))
    gateway.set_bars("IWM", trending_bars(days, 210.0, -1.0))
    reply = bus.reply_to(
        bus.publish(
            {"intent": "allocation", "dryRun": True, "params": {"strategies": ["testsignalgenerator"],
             "strategyParams": {"testsignalgenerator": SIGNAL_PARAMS}}}
        )
    )  # fmt: skip
    assert reply["status"] == "ok", reply
    weights = reply["result"]["strategies"]["testsignalgenerator"]["weights"]
    assert weights == {"SPY": 1 / 3, "QQQ": 0.0, "IWM": 0.0}, weights
    return "SPY", weights["SPY"]


def stock_positions(gateway: Any) -> dict[str, float]:
    """The broker's non-zero positions by symbol."""
    return {s: q for s, q in gateway.positions().items() if q}


# -- the consumer as a separate process (for kills that must be real) ------------------------------------------------


class ConsumerProcess:
    """`python -m consumer serve` as a child process, logging to a file the test can read on failure."""

    def __init__(
        self, project: str, gateway_port: int, log_path: Any, argv: list[str] | None = None, **env: str
    ) -> None:
        """`argv`: the command (default `python -m consumer serve`; a test may wrap the consumer in its own hooks)."""
        import os
        import subprocess
        import sys

        from devstack.emulators import free_port

        self.health_port = free_port()
        self.log_path = log_path
        environ = {
            **os.environ,
            "GOOGLE_CLOUD_PROJECT": project,
            "IB_HOST": "127.0.0.1",
            "IB_PORT": str(gateway_port),
            "IB_CLIENT_ID": "1",
            "IB_ACCOUNT": TEST_ACCOUNT,
            "HEALTH_PORT": str(self.health_port),
            "HEARTBEAT_SECONDS": "1",
            "IB_CONNECT_TIMEOUT": "5",
            "RECONNECT_BACKOFF_MAX_SECONDS": str(RECONNECT_BACKOFF_MAX_SECONDS),
            "CLAIM_LEASE_SECONDS": "3",
            "LOG_FORMAT": "json",
            **env,
        }
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv or [sys.executable, "-m", "consumer", "serve"],
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        def check() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"consumer exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            return self.ready()

        wait_for(check, timeout, "the consumer process to be ready")

    def log(self) -> str:
        from pathlib import Path

        return Path(self.log_path).read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        self._log.close()


# IB's answer to an order the account cannot margin (error 201), as IB Gateway words it.
IB_MARGIN_REJECTION = (
    "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION YOUR EQUITY WITH "
    "LOAN VALUE ["
)


def every_document(project: str) -> dict[str, Any]:
    """Every document of the project by path, with its snapshot (documents under missing parents too)."""
    found: dict[str, Any] = {}

    def walk(collection: Any) -> None:
        for ref in collection.list_documents():
            snapshot = ref.get()
            if snapshot.exists:
                found[ref.path] = snapshot
            for child in ref.collections():
                walk(child)

    for collection in firestore_client(project).collections():
        walk(collection)
    return found


# tgkill(2): a signal to one thread of a process (os.kill's goes to the process, which the kernel hands to any thread).
SYS_TGKILL = {"x86_64": 234, "aarch64": 131}[platform.machine()]


def signal_another_thread(pid: int, signum: int) -> None:
    """Delivers `signum` to a thread of `pid` other than its main one: what the kernel may do with a process's signal
    (Ctrl-C, docker stop) when the main thread is asleep, and what a signal handler must survive."""
    # The oldest first (the client's long-lived threads): a short-lived one may end before, or with the signal.
    threads = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert threads, f"process {pid} has no thread but its main one"
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    if not any(syscall(SYS_TGKILL, pid, thread, signum) == 0 for thread in threads):
        raise OSError(ctypes.get_errno(), f"tgkill found none of the threads {threads} of {pid}")


def claim_of(project: str, request_id: str, mode: str = "paper", account: str = TEST_ACCOUNT) -> dict[str, Any]:
    """The request's claim document (consumer/store/layout.py keys it by the request id's sha256)."""
    import hashlib

    ref = mode_document(project, mode, account).collection("requests")
    return ref.document(hashlib.sha256(request_id.encode()).hexdigest()).get().to_dict() or {}


class FirestoreFault:
    """A TCP proxy in front of the Firestore emulator (`address` for FIRESTORE_EMULATOR_HOST). Once `armed`, the first
    client->server chunk containing `needle` sets off the fault on its connection, and `fired` is set:

    - `lose_answer`: the chunk is forwarded (the server applies it), everything the server sends back is dropped,
      and the connection is cut a second later: a network fault after a commit reached Firestore.
    - `stall`: the chunk is not forwarded, and nothing more passes either way (the connection stays open): a
      Firestore that stopped answering right at that write.
    """

    def __init__(self, upstream: str, needle: bytes, fault: str) -> None:
        import socket

        assert fault in ("lose_answer", "stall"), fault
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._needle = needle
        self._fault = fault
        self.armed = threading.Event()
        self.fired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"firestore-{fault}").start()

    def _accept(self) -> None:
        import socket

        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            state = {"up": True, "down": True}  # which way still passes
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: Any, upstream: Any, state: dict[str, bool]) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                window = tail + chunk
                tail = window[-len(self._needle) :]
                fire = self.armed.is_set() and self._needle in window
                if fire:  # before forwarding: the server's answer must not slip through
                    self.armed.clear()
                    state["down"] = False
                    state["up"] = self._fault == "lose_answer"
                if state["up"]:
                    upstream.sendall(chunk)
                if fire:
                    self.fired.set()
                    if self._fault == "lose_answer":
                        threading.Timer(1.0, self._cut, args=(client, upstream)).start()
        self._ended(state, client, upstream)

    def _down(self, upstream: Any, client: Any, state: dict[str, bool]) -> None:
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                if state["down"]:
                    client.sendall(chunk)
        self._ended(state, client, upstream)

    def _ended(self, state: dict[str, bool], client: Any, upstream: Any) -> None:
        """One side closed: the other is closed too, but on a stalled connection, which stays open as it hangs."""
        if self._fault == "lose_answer" or state["up"]:
            self._cut(client, upstream)

    @staticmethod
    def _cut(*sockets: Any) -> None:
        import socket

        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self._cut(*self._sockets)
