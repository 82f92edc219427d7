"""The one persistent connection to IB Gateway: connected, watched, and reconnected on the broker loop.

IB Gateway restarts every night, drops sockets, and can go half-open without an error. `Gateway.run` keeps one
`IB` object connected through all of that: it connects with backoff, watches for a dropped socket, the 1100
"connectivity lost" family of errors and missed heartbeats, and reports every change to its listeners (the
service holds requests while the gateway is away, so they wait instead of failing and burning attempts).

Every method here runs on the broker loop; nothing else may touch `self.ib`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ib_insync import IB
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from consumer.broker.shared import CURRENT_TIME_GAP, SharedRequests
from consumer.config import Settings
from consumer.errors import GatewayReadOnly, Transient
from consumer.logs import get_logger
from consumer.metrics import Metrics

log = get_logger(__name__)

# IB's connectivity notices (error codes with reqId -1): the socket stays up but trading is impossible.
LOST = 1100  # connectivity between IB and the gateway lost
RESTORED_DATA_LOST = 1101  # restored, market data and account subscriptions lost
RESTORED = 1102  # restored, data kept
CLIENT_ID_IN_USE = 326
# 321 "Error validating request:-'bY' : cause - The API interface is currently in Read-Only mode."
VALIDATION_ERROR = 321
READ_ONLY_TEXT = "Read-Only mode"
# reqCurrentTime answers in whole seconds: a smaller difference from our clock is its rounding, not a skew.
CLOCK_RESOLUTION = 2.0
# How long a start-up download may take once attempts that missed it have doubled IB_CONNECT_TIMEOUT.
MAX_CONNECT_TIMEOUT = 600.0


class _StartupTimeouts(logging.Handler):
    """ib_insync's connect logs "<name> request timed out" for a start-up download that missed its per-request
    timeout (IB_CONNECT_TIMEOUT) and carries on without it; we count that as a failed connect instead."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.missed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.endswith("request timed out"):
            self.missed.append(message.removesuffix(" request timed out"))


class _ReadOnlyRefusals:
    """Watches a connect for IB's 321 "Read-Only mode": a read-only gateway refuses the open- and completed-orders
    downloads of ib_insync's connect that way and never ends them. It ends them here, failed, so the connect goes
    on at once instead of timing out, and the connection is marked read-only (decision 26). On one socket, so
    nothing is reconnected, and every connect finds out afresh."""

    def __init__(self, ib: IB) -> None:
        self._ib = ib
        self.seen = False

    def __call__(self, req_id: int, code: int, message: str, contract: Any) -> None:
        if code != VALIDATION_ERROR or READ_ONLY_TEXT not in message:
            return
        self.seen = True
        for key in ("openOrders", "completedOrders"):
            # ib_insync keys these downloads by name; `_endReq` is how its own decoder ends them.
            self._ib.wrapper._endReq(key, GatewayReadOnly(), success=False)


class State(StrEnum):
    """The connection as listeners and the health endpoint see it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"  # socket up, but the gateway lost IB (1100)
    STOPPED = "stopped"


Listener = Callable[["State"], None]


class Gateway:
    """The connection's lifecycle: owns the `IB` object and keeps it connected; everything else asks the Broker.

    `run` (a task on the broker loop for the life of the process) connects with backoff, sends the market data
    type, and waits for a loss: a dropped socket, error 1101 (reconnected with data lost) or missed heartbeats;
    then it disconnects cleanly, fails the shared requests in flight and connects again. Error 1100 leaves the
    socket up but marks the state DEGRADED until 1102. Listeners (`add_listener`) hear every state change:
    the process holds intake while the gateway is away, the bookkeeper sweeps after every connect. A client id
    already in use is waited for, never replaced: open orders belong to their client id.
    """

    def __init__(self, settings: Settings, heartbeat_misses: int = 2, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self.ib = IB()
        self.requests = SharedRequests(self.ib, settings.order_lookup_timeout, on_time=self._observe_clock)
        self.state = State.CONNECTING
        # Completed (re)connects: also the connection's generation, which a first run's order lookup compares at its
        # start and at placing (consumer.broker.orders.ConnectionRecord).
        self.connections = 0
        self._listeners: list[Listener] = []
        self._heartbeat_misses = heartbeat_misses
        self._lost = asyncio.Event()
        # IB's 1100 (the gateway lost IB) seen on this connection and not yet answered by 1101/1102: a connect that
        # heard it ends DEGRADED, not CONNECTED.
        self._ib_lost = False
        # permId -> what each open order had filled when this connection began (ib_insync's start-up download), and
        # the executions that download reported: the fills of a working order IB will never report are the rest.
        self.filled_at_connect: dict[int, float] = {}
        self.reported_at_connect: set[str] = set()
        self._stopping = False
        self._client_id_in_use = False
        self._clock_offset = 0.0
        # The market data type (config marketDataType) is a setting of the connection: sent again on every connect.
        self.market_data_type = 1
        self.ib.disconnectedEvent += self._on_disconnected
        self.ib.errorEvent += self._on_error

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def use_market_data_type(self, kind: int) -> None:
        """1 live, 2 frozen, 3 delayed, 4 delayed frozen: sent once per change, and again after every reconnect.

        With 3 or 4, IB itself falls back from live (if subscribed) to delayed, and to frozen values when the
        market is closed; snapshot prices then come from whichever data IB sends.
        """
        if kind == self.market_data_type:
            return
        self.market_data_type = kind
        if self.ib.isConnected():
            self.ib.reqMarketDataType(kind)
            log.info("market data type set", market_data_type=kind)

    @property
    def settings(self) -> Settings:
        """The deployment's settings: the broker's request bounds (history, snapshots, order lookups) come from here."""
        return self._settings

    @property
    def order_lookup_timeout(self) -> float:
        """How long finding a request's orders by orderRef may take (ORDER_LOOKUP_TIMEOUT_SECONDS)."""
        return self._settings.order_lookup_timeout

    @property
    def ready(self) -> bool:
        return self.state is State.CONNECTED and self.ib.isConnected()

    def synchronised(self) -> int | None:
        """The generation of the connection now up, synchronised and not dropped since (see `connections`); None
        while it is away. ib_insync's record of our orders (`ib.trades()`, `ib.fills()`) is complete for it: the
        start-up download finished (`_connect` refuses a partial one) and the live stream has kept it current."""
        return self.connections if self.ready else None

    def require(self) -> IB:
        """The IB object, or a Transient failure so the message is redelivered once the gateway is back."""
        if not self.ready:
            raise Transient("gateway_unavailable", f"the gateway is {self.state.value}; the intent will be retried")
        return self.ib

    def now(self) -> datetime:
        """The gateway's time, which decides whether an exchange is open and what today is for the market.

        It is our clock plus the offset measured by every current-time answer (connect, heartbeat, ping); in
        production the offset is zero (both clocks follow NTP). A simulated gateway may run on another day: then the
        whole service does.
        """
        return datetime.fromtimestamp(time.time() + self._clock_offset, UTC)

    def _observe_clock(self, gateway_time: datetime) -> None:
        offset = gateway_time.timestamp() - time.time()
        offset = 0.0 if abs(offset) < CLOCK_RESOLUTION else offset
        # Whole seconds on the wire: a change smaller than that is rounding, not a clock that moved.
        if abs(offset - self._clock_offset) >= CLOCK_RESOLUTION or (offset == 0.0) != (self._clock_offset == 0.0):
            log.warning("gateway clock differs from ours", offset_s=round(offset, 1), gateway_time=gateway_time)
            self._clock_offset = offset

    async def run(self) -> None:
        """Connects, then reconnects after every loss, until `stop`."""
        while not self._stopping:
            await self._connect()
            if self._stopping:
                break
            if self._started():
                heartbeat = asyncio.create_task(self._heartbeat(), name="gateway-heartbeat")
                try:
                    await self._lost.wait()
                finally:
                    heartbeat.cancel()
                    await _ended(heartbeat)
            self._hang_up()
            self.requests.reset()
            if not self._stopping:
                self._set_state(State.CONNECTING)

    def _started(self) -> bool:
        """Opens the connection for work, unless it was lost while connecting: a socket closed right after the
        connect's clock answer, or IB's 1101 (its data lost) heard during the start-up download. Either once ended
        the gateway task: a connection error out of `run` left the service without a gateway until restarted."""
        try:
            self.ib.reqMarketDataType(self.market_data_type)
        except ConnectionError:
            self._lost.set()
        if self._lost.is_set():
            log.warning("gateway connection lost while connecting; connecting again")
            return False
        self.filled_at_connect = {
            t.order.permId: float(t.orderStatus.filled) for t in self.ib.openTrades() if t.order.permId
        }
        self.reported_at_connect = {f.execution.execId for f in self.ib.fills()}
        self.connections += 1
        self._metrics.count("gatewayConnects")
        self._set_state(State.DEGRADED if self._ib_lost else State.CONNECTED)
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._lost.set()
        if self.ib.isConnected():
            self.ib.disconnect()
        self._set_state(State.STOPPED)

    async def _connect(self) -> None:
        s = self._settings
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.25, max=s.reconnect_backoff_max, jitter=0.25),
            retry=retry_if_exception_type((OSError, TimeoutError, ConnectionError)),
            before_sleep=self._log_retry,
        )
        # Each attempt that misses a start-up download by its timeout gives the next one twice as long: a gateway
        # that answers everything, only slowly (IB lists a day's completed orders in time growing with them: 500
        # take about 10 s), missed by the same margin on every attempt with the same timeout, and was never
        # connected to again that day.
        timeout = s.ib_connect_timeout
        async for attempt in retrying:
            with attempt:
                if self._stopping:
                    return
                self._client_id_in_use = False
                # Only this attempt's losses count: a failed attempt's disconnect set it.
                self._lost.clear()
                self._ib_lost = False
                startup = _StartupTimeouts()
                ib_log = logging.getLogger("ib_insync.ib")
                ib_log.addHandler(startup)
                read_only = _ReadOnlyRefusals(self.ib)
                self.ib.errorEvent += read_only
                try:
                    # The timeout applies per start-up request (ib_insync), not to the whole connect.
                    await self.ib.connectAsync(
                        s.ib_host,
                        s.ib_port,
                        clientId=s.ib_client_id,
                        timeout=timeout,
                        account=s.account,
                    )
                except (OSError, TimeoutError, ConnectionError) as e:
                    if self._client_id_in_use:
                        # Open orders belong to a client id, so taking another one would orphan them: wait instead.
                        raise ConnectionError(
                            f"client id {s.ib_client_id} is already in use at {s.ib_host}:{s.ib_port} "
                            "(another consumer, or a stale session the gateway has not dropped yet)"
                        ) from e
                    raise
                finally:
                    ib_log.removeHandler(startup)
                    self.ib.errorEvent -= read_only
                if startup.missed:
                    # Books built on a partial download would be wrong (orders or fills missing): start over.
                    self._hang_up()
                    self._metrics.count("gatewayStartupTimeouts")
                    missed_in, timeout = timeout, min(timeout * 2, MAX_CONNECT_TIMEOUT)
                    raise TimeoutError(f"start-up requests not answered in {missed_in:g}s: {startup.missed}")
                try:
                    await asyncio.wait_for(self.requests.current_time(), s.ib_connect_timeout)  # sets the clock offset
                except (TimeoutError, ConnectionError):
                    self._hang_up()  # connected but not answering: the next attempt starts clean
                    raise
                self.requests.read_only = read_only.seen
        if self.requests.read_only:
            log.warning(
                "the gateway's API is read-only: trading intents are refused, open orders unknown",
                detail="IB 321 Read-Only mode; IBC ReadOnlyApi=yes (IB_READ_ONLY_API)",
            )
        log.info(
            "gateway connected",
            host=s.ib_host,
            port=s.ib_port,
            client_id=s.ib_client_id,
            accounts=self.ib.managedAccounts(),
            server_version=self.ib.client.serverVersion(),
        )

    def _hang_up(self) -> None:
        """Disconnects as if the gateway had dropped the socket. ib_insync resets its session state (orders, fills,
        account values and summary, subscriptions) and fails the requests waiting on the socket only when the peer
        closes it: its own disconnect marks the API not ready before the close is seen (ib_insync 0.9.86,
        Client._onSocketDisconnected), so after a 1101 or missed heartbeats the next connection kept the old
        state: the account summary never subscribed again (every summary answered the values of the moment of the
        loss), orders finished meanwhile kept their old status, and snapshots waited out their timeout."""
        if self.ib.isConnected():
            self.ib.disconnect()
            self.ib.wrapper.connectionClosed()

    async def _heartbeat(self) -> None:
        """A half-open socket sends no error; an unanswered current-time request is how we notice."""
        interval = self._settings.heartbeat_interval
        misses = 0
        while True:
            await asyncio.sleep(interval)
            received = self._received()
            if received is None:  # the socket went while we slept; its disconnect may not have been seen yet
                self._lost.set()
                return
            try:
                # Other callers' requests may come first, each a gap apart: the budget allows for two of them.
                answer = self.requests.current_time()
                await asyncio.wait_for(answer, interval + 2 * CURRENT_TIME_GAP)
                misses = 0
            except (TimeoutError, ConnectionError) as e:
                # A late answer from a gateway that kept sending is no dead socket: the request waits behind our own
                # burst in ib_insync's 45/s throttle (a rebalance of hundreds of orders), or the gateway is slow.
                if isinstance(e, TimeoutError) and self._received() not in (None, received):
                    log.info("gateway heartbeat late while the gateway is sending; not a miss")
                    continue
                misses += 1
                log.warning("gateway heartbeat missed", misses=misses)
                if misses >= self._heartbeat_misses:
                    log.error("gateway unresponsive; reconnecting", misses=misses)
                    self._lost.set()
                    return

    def _received(self) -> int | None:
        """Messages received on this connection; None once it is gone (ib_insync raises ConnectionError)."""
        try:
            return int(self.ib.client.connectionStats().numMsgRecv)
        except ConnectionError:
            return None

    def _on_disconnected(self) -> None:
        if not self._stopping:
            log.warning("gateway disconnected")
            self._metrics.count("gatewayDisconnects")
        self._lost.set()

    def _on_error(self, req_id: int, code: int, message: str, contract: Any) -> None:
        if code == CLIENT_ID_IN_USE:
            self._client_id_in_use = True
        elif code == LOST:
            log.error("gateway lost its connection to IB", code=code, detail=message)
            self._ib_lost = True
            if self.state is not State.CONNECTING:  # while connecting, `_started` decides (a 1102 would open it early)
                self._set_state(State.DEGRADED)
        elif code == RESTORED_DATA_LOST:
            # Subscriptions are gone; a fresh connection re-requests positions, orders and executions.
            log.warning("gateway reconnected to IB with data lost; resynchronising", code=code)
            self._ib_lost = False
            self._lost.set()
        elif code == RESTORED:
            self._ib_lost = False
            if self.state is State.DEGRADED:
                log.info("gateway connectivity to IB restored", code=code)
                self._set_state(State.CONNECTED)

    def _set_state(self, state: State) -> None:
        if state is self.state:
            return
        self.state = state
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:
                log.exception("gateway listener failed", state=state.value)

    def _log_retry(self, retry_state: Any) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome else None
        log.warning(
            "gateway not reachable; retrying",
            attempt=retry_state.attempt_number,
            retry_in_s=round(retry_state.next_action.sleep, 2) if retry_state.next_action else None,
            error=str(error) or type(error).__name__,
        )


async def _ended(task: asyncio.Task[None]) -> None:
    """Waits for a cancelled helper task; its own failure is logged, never raised into `run` (which would end the
    reconnecting)."""
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("gateway heartbeat failed")
