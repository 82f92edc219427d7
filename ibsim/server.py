"""GatewayServer: the TCP server speaking the TWS API, with the fault controls tests use."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import os
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from . import protocol as P
from .broker import Broker, SimOrder, ib_time
from .clock import SimClock, parse_instant
from .market import BarRequestError, Instrument, PriceWalk, make_bars
from .protocol import ContractRequest, ProtocolError, Reader
from .scenario import Scenario, daily_bars

log = logging.getLogger("ibsim")

FARM_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefil"),
)
NO_SECURITY = "No security definition has been found for the request"
CLIENT_ID_IN_USE = "Unable to connect as the client id is already in use. Retry with a unique client id."
DELAYED = {1: 66, 2: 67, 4: 68, 6: 72, 7: 73, 8: 74, 9: 75, 14: 76}
NOT_SUBSCRIBED = (
    "Requested market data is not subscribed. Check API status by selecting the Account menu then under "
    "Management choose Market Data Subscription Manager and/or Delayed market data is not available."
)
DISPLAYING_DELAYED = "Requested market data is not subscribed. Displaying delayed market data."


class Connection(asyncio.Protocol):
    """One client socket: framing, handshake, pacing, latency, subscriptions."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buffer = b""
        self.stage = "api"  # api -> version -> start -> ready -> closed
        self.version = 0
        self.client_id: int | None = None
        self.tokens = float(server.pacing_max)
        self.tokens_at = time.monotonic()
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.close_when_flushed = False
        # subscriptions
        self.mkt_type = 1
        self.streams: dict[int, str] = {}
        self.account_sub: str | None = None
        self.account_cache: dict[tuple[str, str], str] = {}
        self.portfolio_cache: dict[str, tuple] = {}
        self.positions_sub = False
        self.multi_subs: dict[int, str] = {}
        self.multi_cache: dict[int, dict[tuple[str, str], str]] = {}
        self.summary_subs: dict[int, list[str]] = {}
        self.pnl_subs: dict[int, str] = {}

    # -- asyncio.Protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.connections.add(self)
        log.info("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stage = "closed"
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        self.server._forget(self)
        who = f"client {self.client_id}" if self.client_id is not None else "connection"
        log.info("%s from %s disconnected%s", who, self.peer, f" ({exc})" if exc else "")

    def data_received(self, data: bytes) -> None:
        if self.stage == "closed":
            return
        self.buffer += data
        try:
            self._consume()
        except ProtocolError as e:
            log.warning("closing %s: %s", self.peer, e)
            self.abort()

    # -- framing --------------------------------------------------------------------------------------------
    def _consume(self) -> None:
        while self.stage != "closed":
            if self.stage == "api":
                if len(self.buffer) < 4:
                    if not b"API\0".startswith(self.buffer):
                        raise ProtocolError(f"expected the API handshake, got {self.buffer[:16]!r}")
                    return
                if self.buffer[:4] != b"API\0":
                    raise ProtocolError(f"expected the API handshake, got {self.buffer[:16]!r}")
                self.buffer = self.buffer[4:]
                self.stage = "version"
                continue
            if len(self.buffer) < 4:
                return
            (size,) = struct.unpack(">I", self.buffer[:4])
            if size == 0 or size > P.MAX_FRAME:
                raise ProtocolError(f"bad frame length {size}")
            if len(self.buffer) < 4 + size:
                return
            payload = self.buffer[4 : 4 + size]
            self.buffer = self.buffer[4 + size :]
            if self.server.frozen:
                continue  # half-open: framing stays aligned, the message goes nowhere
            text = payload.decode(errors="backslashreplace")
            if self.stage == "version":
                self._handshake(text)
                continue
            fields = text.split("\0")
            if fields and fields[-1] == "":
                fields.pop()
            if not fields:
                raise ProtocolError("empty message")
            try:
                msg_id = int(fields[0])
            except ValueError:
                raise ProtocolError(f"message id {fields[0][:20]!r} is not a number") from None
            self._pace()
            self.server._dispatch(self, msg_id, fields)

    def _handshake(self, text: str) -> None:
        low, high = P.parse_version_range(text)
        version = P.choose_version(low, high)
        if version is None:
            if low > P.MAX_VERSION:
                code, msg = (
                    503,
                    f"The TWS is out of date and must be upgraded (supports v{P.MIN_VERSION}..{P.MAX_VERSION})",
                )
            else:
                code, msg = 506, f"Unsupported version: client v{low}..{high}, ibsim v{P.MIN_VERSION}..{P.MAX_VERSION}"
            log.warning("refusing %s: %s", self.peer, msg)
            self.send([4, 2, -1, code, msg])
            self.close()
            return
        self.version = version
        self.stage = "start"
        now = self.server.clock.now("America/New_York")
        self.send([version, now.strftime("%Y%m%d %H:%M:%S ") + (now.tzname() or "EST")])
        log.info("%s speaks v%d..%d, using server version %d", self.peer, low, high, version)

    def _pace(self) -> None:
        """IB's limit of 50 messages per second, as a token bucket: 50 in a burst, refilled at 50 per second.

        A strict sliding 1 s window would flag ib_insync's own throttle (45 per rolling second of its clock):
        its batches arrive a second apart give or take scheduling jitter, and a window that catches two batches
        counts 75-80 messages. The bucket forgives that jitter (up to ~0.2 s) and still flags any sustained rate
        above 50/s and any burst above 50. Violating messages are still processed.
        """
        srv = self.server
        now = time.monotonic()
        rate = float(srv.pacing_max)
        self.tokens = min(rate, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        srv.pacing_count += 1
        self.send_error(-1, 100, f"Max rate of messages per second has been exceeded:max={srv.pacing_max} rec=1")

    # -- sending --------------------------------------------------------------------------------------------
    def send(self, fields: list[Any]) -> None:
        if self.stage == "closed" or self.transport is None or self.server.frozen:
            return
        data = P.encode(fields)
        fixed, jitter = self.server.latency
        if not fixed and not jitter and not self.queue:
            self.transport.write(data)
            return
        loop = asyncio.get_running_loop()
        delay = fixed + (self.server.rng.uniform(0, jitter) if jitter else 0.0)
        due = max(loop.time() + delay, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        if self.flush_handle is None:
            self.flush_handle = loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.flush_handle = None
        if self.stage == "closed" or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.queue and self.queue[0][0] <= now + 0.0005:
            _, data = self.queue.popleft()
            if not self.server.frozen:
                self.transport.write(data)
        if self.queue:
            self.flush_handle = loop.call_at(self.queue[0][0], self._flush)
        elif self.close_when_flushed:
            self.transport.close()

    def send_error(self, req_id: int, code: int, message: str) -> None:
        self.send(P.error_msg(self.version or 176, req_id, code, message))

    def close(self) -> None:
        """Closes after everything queued is written."""
        if self.transport is None or self.stage == "closed":
            return
        if self.queue:
            self.close_when_flushed = True
        else:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.stage = "closed"

    @property
    def ready(self) -> bool:
        return self.stage == "ready"


class GatewayServer:
    """A simulated IB Gateway. All methods run on the server's event loop (use ThreadedGateway from other threads)."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        host: str = "127.0.0.1",
        port: int = 4002,
        state_file: str | Path | None = None,
    ) -> None:
        self.scenario = scenario or Scenario.default()
        self.clock = SimClock(self.scenario.clockStart)
        self.host = host
        self.port = port
        self.state_file = Path(state_file) if state_file else None
        self.instruments: dict[str, Instrument] = {s.key: Instrument(s) for s in self.scenario.instruments}
        self._by_symbol: dict[str, list[Instrument]] = {}
        self._by_con_id: dict[int, Instrument] = {}
        for inst in self.instruments.values():
            self._by_symbol.setdefault(inst.symbol.upper(), []).append(inst)
            self._by_con_id[inst.conId] = inst
        self.broker = Broker(self.scenario, self.instruments, self, asyncio.get_running_loop, self.clock)
        self.connections: set[Connection] = set()
        self.clients: dict[int, Connection] = {}
        self.frozen = False
        # Commission reports held back (fault: a report that arrives late), by execId.
        self.held_commissions: dict[str, dict[str, Any]] | None = None
        lat = self.scenario.latency
        self.latency = (lat.get("fixed", 0.0), lat.get("jitter", 0.0))
        self.rng = random.Random(self.scenario.seed)
        self.walk = PriceWalk(self.scenario.seed)
        self.pacing_max = int(self.scenario.pacing.get("maxPerSecond", 50))
        self.pacing_count = 0
        self.protocol_mismatches = 0
        self.market_data_type_requests: list[tuple[int, int]] = []
        self._server: asyncio.base_events.Server | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task] = set()
        self._account_push: asyncio.Handle | None = None
        self._dirty_accounts: set[str] = set()
        self._save_handle: asyncio.TimerHandle | None = None
        self._started = False
        self.started_at = 0.0
        if self.state_file and self.state_file.exists():
            try:
                self.broker.load_state(json.loads(self.state_file.read_text()))
                log.info("state loaded from %s", self.state_file)
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("state file %s unreadable, starting fresh: %s", self.state_file, e)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self._listen()
        self._started = True
        self.started_at = time.monotonic()
        for fault in self.scenario.faults:
            self._timers.append(loop.call_later(fault.at, self._run_fault, fault.action, fault.args))
        if any(i.spec.volatility > 0 for i in self.instruments.values()):
            self._spawn(self._ticker())
        log.info(
            "listening on %s:%d (scenario %s, %d instruments, accounts %s)",
            self.host,
            self.port,
            self.scenario.name,
            len(self.instruments),
            ",".join(self.broker.accounts),
        )

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for handle in (*self._timers, self._reopen, self._save_handle, self._account_push):
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        self.clients.clear()
        self._save_now()
        self._started = False
        await asyncio.sleep(0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.client_id is not None and self.clients.get(conn.client_id) is conn:
            del self.clients[conn.client_id]

    async def _ticker(self) -> None:
        interval = self.scenario.tickIntervalMs / 1000
        while True:
            await asyncio.sleep(interval)
            for inst in self.instruments.values():
                if self.walk.step(inst, interval):
                    self._price_moved(inst)

    # -- fault API (loop side) ------------------------------------------------------------------------------
    def _run_fault(self, action: str, args: dict[str, Any]) -> None:
        log.info("scheduled fault: %s %s", action, args)
        handlers: dict[str, Callable[..., Any]] = {
            "drop_connections": self.drop_connections,
            "refuse_connections": self.refuse_connections,
            "send_error": self.send_error,
            "freeze": lambda: self.freeze(True),
            "unfreeze": lambda: self.freeze(False),
            "hold_fills": lambda: self.hold_fills(True),
            "release_fills": lambda: self.hold_fills(False),
            "set_latency": self.set_latency,
            "reject_next_order": self.reject_next_order,
            "restart": self.restart,
            "set_price": self.set_price,
            "roll_day": self.roll_day,
        }
        handlers[action](**args)

    def drop_connections(self) -> int:
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
            self._forget(conn)
        log.info("fault: dropped %d connection(s)", len(conns))
        return len(conns)

    def refuse_connections(self, seconds: float) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._reopen is not None:
            self._reopen.cancel()
        log.info("fault: refusing connections for %.1fs", seconds)
        self._reopen = asyncio.get_running_loop().call_later(seconds, lambda: self._spawn(self._accept_again()))

    async def _accept_again(self) -> None:
        self._reopen = None
        if self._server is None and self._started:
            for _ in range(50):
                try:
                    await self._listen()
                    break
                except OSError as e:
                    log.warning("cannot listen again yet: %s", e)
                    await asyncio.sleep(0.1)
            log.info("accepting connections again on %s:%d", self.host, self.port)

    def set_latency(self, fixed: float = 0.0, jitter: float = 0.0) -> None:
        self.latency = (max(0.0, float(fixed)), max(0.0, float(jitter)))
        log.info("fault: latency %.3fs + up to %.3fs jitter", *self.latency)

    def reject_next_order(self, code: int = 201, message: str = "Order rejected - reason:Simulated rejection") -> None:
        self.broker.reject_next = (code, message)

    def hold_fills(self, on: bool = True) -> None:
        self.broker.hold = bool(on)
        log.info("fault: fills %s", "held" if on else "released")
        if not on:
            self.broker.work_all()

    def hold_commissions(self, on: bool = True) -> None:
        """Executions go out without their commission reports until released (IB sends them late at times)."""
        if on:
            self.held_commissions = self.held_commissions or {}
            log.info("fault: commission reports held")
            return
        held, self.held_commissions = self.held_commissions or {}, None
        log.info("fault: %d held commission reports released", len(held))
        for execution in held.values():
            conn = self.clients.get(execution["clientId"])
            if conn is not None:
                conn.send(P.commission_report_msg(execution))

    def set_max_fill_size(self, size: float) -> None:
        """Largest execution; bigger orders fill in several."""
        if size <= 0:
            raise ValueError("maxFillSize must be positive")
        self.scenario.maxFillSize = float(size)

    def freeze(self, on: bool = True) -> None:
        self.frozen = bool(on)
        log.info("fault: %s", "frozen (half-open: nothing read, nothing sent)" if on else "unfrozen")

    def send_error(self, code: int, message: str = "", req_id: int = -1) -> None:
        if not message:
            message = {
                1100: "Connectivity between IB and Trader Workstation has been lost.",
                1101: "Connectivity between IB and TWS has been restored- data lost.",
                1102: "Connectivity between IB and TWS has been restored- data maintained.",
                2103: "Market data farm connection is broken:usfarm",
                2104: "Market data farm connection is OK:usfarm",
                2105: "HMDS data farm connection is broken:ushmds",
                2106: "HMDS data farm connection is OK:ushmds",
                2157: "Sec-def data farm connection is broken:secdefil",
                2158: "Sec-def data farm connection is OK:secdefil",
            }.get(code, f"Simulated error {code}")
        for conn in list(self.clients.values()):
            conn.send_error(req_id, code, message)
        log.info("fault: error %d %r sent to %d client(s)", code, message, len(self.clients))

    def restart(self, down_seconds: float = 0.0) -> None:
        self.frozen = False
        self.drop_connections()
        if down_seconds > 0:
            self.refuse_connections(down_seconds)
        log.info("fault: restart (down %.1fs), state kept", down_seconds)

    def set_price(self, symbol: str, price: float) -> None:
        inst = self._instrument(symbol)
        inst.set_price(float(price))
        log.info("price %s = %s", inst.key, inst.price)
        self._price_moved(inst)

    def set_position(self, symbol: str, quantity: float, avg_cost: float | None = None, account: str | None = None):
        inst = self._instrument(symbol)
        if inst.secType == "CASH":
            raise ValueError(f"{symbol} is forex: IB books it as cash, use set_cash")
        acct = self.broker.accounts[account or self.broker.default_account]
        pos = acct.positions.get(inst.key)
        if pos is None:
            from .broker import Position

            pos = acct.positions[inst.key] = Position()
        pos.quantity = float(quantity)
        if avg_cost is not None:
            pos.avgCost = float(avg_cost)
        elif not pos.avgCost:
            pos.avgCost = inst.price * inst.multiplier
        if pos.quantity == 0 and not pos.realized:
            acct.positions.pop(inst.key, None)
        self.position_changed(acct.id, inst.key)
        self.account_changed(acct.id)
        self.state_changed()

    def set_bars(self, symbol: str, bars: list[dict[str, Any]]) -> None:
        """Daily history of an instrument from now on ({date, open, high, low, close, volume?} each), as a
        scenario's `bars`: a test gives the market the history its signal needs instead of hoping for one."""
        inst = self._instrument(symbol)
        inst.spec.bars = daily_bars(bars, f"set_bars({symbol})")

    def set_cash(self, currency: str, amount: float, account: str | None = None) -> None:
        acct = self.broker.accounts[account or self.broker.default_account]
        acct.cash[currency] = float(amount)
        self.account_changed(acct.id)
        self.state_changed()

    def roll_day(self) -> None:
        """A new trading day: the clock moves to the same time on the next weekday, then orders roll."""
        now = self.clock.now("America/New_York")
        days = {4: 3, 5: 2}.get(now.weekday(), 1)
        self.clock.advance(days * 86400)
        log.info("new trading day: %s", self.clock.now("America/New_York").strftime("%a %Y-%m-%d %H:%M %Z"))
        self.broker.roll_day()

    def set_time(self, when: dt.datetime | str) -> None:
        """Moves the clock to `when` (aware datetime or ISO 8601 text); it runs on from there."""
        self.clock.set(parse_instant(when) if isinstance(when, str) else when)
        log.info("clock set to %s", self.clock.now().isoformat())

    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def now(self) -> dt.datetime:
        return self.clock.now()

    # -- inspection -----------------------------------------------------------------------------------------
    def orders(self) -> list[dict[str, Any]]:
        return [o.public(o.key) for o in self.broker.orders.values()]

    def executions(self) -> list[dict[str, Any]]:
        keys = ("execId", "orderId", "permId", "orderRef", "symbol", "side", "shares", "price", "time", "commission")
        out = []
        for e in self.broker.executions:
            d = {k: e[k] for k in keys}
            d["clientId"] = e["clientId"]
            d["account"] = e["account"]
            d["commissionCurrency"] = e["commissionCurrency"]
            out.append(d)
        return out

    def positions(self, account: str | None = None) -> dict[str, float]:
        acct = self.broker.accounts[account or self.broker.default_account]
        return {k: p.quantity for k, p in acct.positions.items() if p.quantity}

    def cash(self, account: str | None = None) -> dict[str, float]:
        return dict(self.broker.accounts[account or self.broker.default_account].cash)

    def connected_client_ids(self) -> list[int]:
        return sorted(self.clients)

    def market_data_types(self) -> list[tuple[int, int]]:
        """(clientId, type) of every reqMarketDataType received, oldest first."""
        return list(self.market_data_type_requests)

    def pacing_violations(self) -> int:
        return self.pacing_count

    def _instrument(self, symbol: str) -> Instrument:
        inst = self.instruments.get(symbol)
        if inst is None and len(symbol) == 6 and symbol.isalpha():
            inst = self.instruments.get(f"{symbol[:3]}.{symbol[3:]}")
        if inst is None:
            raise KeyError(f"unknown instrument {symbol!r}")
        return inst

    # -- contracts ------------------------------------------------------------------------------------------
    def resolve(self, c: ContractRequest) -> list[Instrument]:
        if c.conId:
            inst = self._by_con_id.get(c.conId)
            return [inst] if inst is not None and inst.matches(c) else []
        candidates = self._by_symbol.get(c.symbol.upper(), []) if c.symbol else list(self.instruments.values())
        return [i for i in candidates if i.matches(c)]

    # -- dispatch -------------------------------------------------------------------------------------------
    def _dispatch(self, conn: Connection, msg_id: int, fields: list[str]) -> None:
        if conn.stage == "start" and msg_id != P.START_API:
            log.warning("%s sent message %d before startApi; ignored", conn.peer, msg_id)
            return
        handler = self.HANDLERS.get(msg_id)
        if handler is None:
            index = P.UNSUPPORTED_REQ_ID_INDEX.get(msg_id)
            req_id = -1
            if index is not None and len(fields) > index:
                with contextlib.suppress(ValueError):
                    req_id = int(fields[index])
            log.info("client %s: unsupported request %d (reqId %d)", conn.client_id, msg_id, req_id)
            conn.send_error(req_id, 321, f"Error validating request:-'{msg_id}' : cause - Unsupported request (ibsim)")
            return
        try:
            handler(self, conn, Reader(fields))
        except (ProtocolError, ValueError, IndexError, KeyError) as e:
            log.warning("client %s: cannot read message %d %s: %s", conn.client_id, msg_id, fields[:6], e)
            conn.send_error(-1, 320, f"Error reading request:-'{msg_id}' : cause - {e}")

    # handlers take (conn, reader positioned after the message id)
    def _start_api(self, conn: Connection, r: Reader) -> None:
        r.skip(1)  # version
        client_id = r.int()
        if conn.stage == "ready":
            return
        if client_id in self.clients:
            log.warning("client id %d already in use; refusing %s", client_id, conn.peer)
            conn.send_error(-1, 326, CLIENT_ID_IN_USE)
            conn.close()
            return
        conn.client_id = client_id
        conn.stage = "ready"
        self.clients[client_id] = conn
        conn.send([15, 1, ",".join(self.broker.accounts)])
        conn.send([9, 1, self.broker.next_order_id(client_id)])
        for code, msg in FARM_NOTICES:
            conn.send_error(-1, code, msg)
        log.info("client %d ready (%s, server version %d)", client_id, conn.peer, conn.version)

    def _req_current_time(self, conn: Connection, r: Reader) -> None:
        conn.send([49, 1, int(self.clock.time())])

    def _req_ids(self, conn: Connection, r: Reader) -> None:
        conn.send([9, 1, self.broker.next_order_id(conn.client_id or 0)])

    def _req_managed_accts(self, conn: Connection, r: Reader) -> None:
        conn.send([15, 1, ",".join(self.broker.accounts)])

    def _req_market_data_type(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        kind = r.int()
        conn.mkt_type = kind if kind in (1, 2, 3, 4) else 1
        self.market_data_type_requests.append((conn.client_id or 0, kind))

    def _noop(self, conn: Connection, r: Reader) -> None:
        pass

    # contract details
    def _req_contract_details(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        c = r.contract()
        matches = self.resolve(c)
        if not matches:
            conn.send_error(req_id, 200, NO_SECURITY)
            return
        now = self.clock.now()
        for inst in matches:
            exchange = c.exchange.upper() if c.exchange and c.exchange.upper() in inst.valid_exchanges() else None
            view = inst.view(exchange)
            conn.send(P.contract_details_msg(conn.version, req_id, view, inst.details(self.scenario.hours, now)))
        conn.send([52, 1, req_id])

    def _one(self, conn: Connection, req_id: int, c: ContractRequest) -> Instrument | None:
        matches = self.resolve(c)
        if len(matches) == 1:
            return matches[0]
        if matches:
            conn.send_error(req_id, 200, f"The contract description specified for {c.symbol} is ambiguous.")
        else:
            conn.send_error(req_id, 200, NO_SECURITY)
        return None

    # market data
    def _delayed(self, conn: Connection) -> bool:
        """Delayed ticks: asked for (3, 4) and no live subscription to take precedence (IB sends live if it can)."""
        return conn.mkt_type in (3, 4) and not self.scenario.liveSubscription

    def _ticks(self, conn: Connection, req_id: int, inst: Instrument, first: bool) -> None:
        delayed = self._delayed(conn)

        def tick(kind: int, price: float, size: float) -> None:
            conn.send([1, 6, req_id, DELAYED[kind] if delayed else kind, price, size, 0])

        tick(1, inst.bid, inst.quote_size)
        tick(2, inst.ask, inst.quote_size)
        if inst.secType != "CASH":
            tick(4, inst.price, 100.0)
            conn.send([2, 6, req_id, DELAYED[8] if delayed else 8, inst.volume])
        if first:
            tick(9, round(inst.spec.price, 10), 0.0)

    def _req_mkt_data(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        c = r.contract()
        if c.secType == "BAG":
            for _ in range(r.int()):
                r.skip(4)
        if r.bool():
            r.skip(3)
        r.skip(1)  # generic ticks
        snapshot = r.bool()
        regulatory = r.bool()
        inst = self._one(conn, req_id, c)
        if inst is None:
            return
        if not self.scenario.liveSubscription:
            if conn.mkt_type in (1, 2):  # live and frozen both need the live subscription
                conn.send_error(req_id, 354, NOT_SUBSCRIBED)
                return
            conn.send_error(req_id, 10167, DISPLAYING_DELAYED)
        if conn.mkt_type != 1:
            # The type this request actually gets: live whenever the subscription allows it (markets never close
            # for data here, so frozen is live too), delayed otherwise.
            conn.send([58, 1, req_id, conn.mkt_type if self._delayed(conn) else 1])
        self._ticks(conn, req_id, inst, first=True)
        if snapshot or regulatory:
            conn.send([57, 1, req_id])
        else:
            conn.streams[req_id] = inst.key

    def _cancel_mkt_data(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        conn.streams.pop(r.int(), None)

    def _req_historical_data(self, conn: Connection, r: Reader) -> None:
        req_id = r.int()
        c = r.contract()
        r.skip(1)  # includeExpired
        end = r.str()
        bar_size = r.str()
        duration = r.str()
        use_rth = r.bool()
        what = r.str()
        format_date = r.int(1)
        inst = self._one(conn, req_id, c)
        if inst is None:
            return
        now = self.clock.now()
        try:
            bars = make_bars(inst, self.scenario.seed, end, duration, bar_size, use_rth, format_date, now, what)
        except BarRequestError as e:
            conn.send_error(req_id, 162, f"Historical Market Data Service error message:{e}")
            return
        start_text = bars[0].date if bars else ""
        end_text = now.strftime("%Y%m%d %H:%M:%S")
        fields: list[Any] = [17, req_id, start_text, end_text, len(bars)]
        for b in bars:
            fields += [b.date, b.open, b.high, b.low, b.close, b.volume, b.wap, b.count]
        conn.send(fields)

    # account
    def _req_account_updates(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        subscribe = r.bool()
        account = r.str() or self.broker.default_account
        if not subscribe:
            conn.account_sub = None
            return
        if account not in self.broker.accounts:
            conn.send_error(-1, 321, f"Error validating request:-'6' : cause - unknown account {account}")
            conn.send([54, 1, account])
            return
        conn.account_sub = account
        conn.account_cache = {}
        conn.portfolio_cache = {}
        self._push_account(conn, account, full=True)
        conn.send([54, 1, account])

    def _push_account(self, conn: Connection, account: str, full: bool = False) -> None:
        changed = False
        for key, amount, cur in self.broker.account_values(account):
            if full or conn.account_cache.get((key, cur)) != amount:
                conn.account_cache[(key, cur)] = amount
                conn.send([6, 2, key, amount, cur, account])
                changed = True
        for inst, pos, price, value, unrealized in self.broker.portfolio(account):
            row = (pos.quantity, price, round(value, 2), pos.avgCost, round(unrealized, 2), round(pos.realized, 2))
            if full or conn.portfolio_cache.get(inst.key) != row:
                conn.portfolio_cache[inst.key] = row
                conn.send([7, 8, *inst.view().portfolio11(), *row, account])
                changed = True
        for key in list(conn.portfolio_cache):
            if key not in self.broker.accounts[account].positions:
                inst = self.instruments[key]
                del conn.portfolio_cache[key]
                conn.send([7, 8, *inst.view().portfolio11(), 0.0, inst.price, 0.0, 0.0, 0.0, 0.0, account])
        if changed or full:
            conn.send([8, 1, self.clock.now("America/New_York").strftime("%H:%M")])

    def _req_account_updates_multi(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        account = r.str() or self.broker.default_account
        r.skip(2)
        if account not in self.broker.accounts:
            conn.send_error(req_id, 321, f"Error validating request:-'76' : cause - unknown account {account}")
            return
        conn.multi_subs[req_id] = account
        conn.multi_cache[req_id] = {}
        self._push_multi(conn, req_id, account, full=True)
        conn.send([74, 1, req_id])

    def _push_multi(self, conn: Connection, req_id: int, account: str, full: bool = False) -> None:
        cache = conn.multi_cache.setdefault(req_id, {})
        for key, value, cur in self.broker.account_values(account):
            if full or cache.get((key, cur)) != value:
                cache[(key, cur)] = value
                conn.send([73, 1, req_id, account, "", key, value, cur])

    def _cancel_account_updates_multi(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        conn.multi_subs.pop(req_id, None)
        conn.multi_cache.pop(req_id, None)

    def _req_account_summary(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        r.skip(1)  # group
        tags = [t.strip() for t in r.str().split(",") if t.strip()]
        conn.summary_subs[req_id] = tags
        for account in self.broker.accounts:
            for tag, value, cur in self.broker.summary(account, tags):
                conn.send([63, 1, req_id, account, tag, value, cur])
        conn.send([64, 1, req_id])

    def _cancel_account_summary(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        conn.summary_subs.pop(r.int(), None)

    def _position_msg(self, account: str, inst: Instrument, quantity: float, avg_cost: float) -> list[Any]:
        return [61, 3, account, *inst.view(inst.listing).c11(), quantity, avg_cost]

    def _req_positions(self, conn: Connection, r: Reader) -> None:
        conn.positions_sub = True
        for acct in self.broker.accounts.values():
            for key, pos in acct.positions.items():
                if pos.quantity:
                    conn.send(self._position_msg(acct.id, self.instruments[key], pos.quantity, pos.avgCost))
        conn.send([62, 1])

    def _cancel_positions(self, conn: Connection, r: Reader) -> None:
        conn.positions_sub = False

    def _req_pnl(self, conn: Connection, r: Reader) -> None:
        req_id = r.int()
        account = r.str() or self.broker.default_account
        if account not in self.broker.accounts:
            conn.send_error(req_id, 321, f"Error validating request:-'92' : cause - unknown account {account}")
            return
        conn.pnl_subs[req_id] = account
        self._push_pnl(conn, req_id, account)

    def _push_pnl(self, conn: Connection, req_id: int, account: str) -> None:
        v = self.broker.valuation(account)
        conn.send([94, req_id, v["UnrealizedPnL"] + v["RealizedPnL"], v["UnrealizedPnL"], v["RealizedPnL"]])

    def _cancel_pnl(self, conn: Connection, r: Reader) -> None:
        conn.pnl_subs.pop(r.int(), None)

    # orders
    def _order_view(self, order: SimOrder):
        return self.instruments[order.key].view(order.exchange)

    def _send_open_order(self, conn: Connection, order: SimOrder) -> None:
        conn.send(P.open_order_msg(conn.version, self._order_view(order), order.wire(), order.status))

    def _place_order(self, conn: Connection, r: Reader) -> None:
        req = P.read_place_order(r, conn.version)
        if req.leftover:
            self.protocol_mismatches += 1
            log.warning("client %s: placeOrder %d had %d unread fields", conn.client_id, req.orderId, req.leftover)
        inst = self._one(conn, req.orderId, req.contract)
        if inst is None:
            log.info(
                "client %s: order %d for unknown contract %s", conn.client_id, req.orderId, req.contract.describe()
            )
            return
        if req.whatIf:
            self._what_if(conn, req, inst)
            return
        self.broker.place(conn.client_id or 0, req, inst)

    def _what_if(self, conn: Connection, req: P.OrderRequest, inst: Instrument) -> None:
        reason = self.broker.validate(req, inst)
        if reason is not None:
            conn.send_error(req.orderId, 201, f"Order rejected - reason:{reason}")
            return
        account = req.account or self.broker.default_account
        v = self.broker.valuation(account)
        rate = self.broker.rate(inst.currency, v["base"])
        notional = abs(req.totalQuantity) * inst.price * inst.multiplier * rate
        margin = notional * (0.06 if inst.secType == "FUT" else 0.25 if inst.secType == "STK" else 0.03)
        before = (v["InitMarginReq"], v["MaintMarginReq"], v["EquityWithLoanValue"])
        what_if = {
            "initMarginBefore": f"{before[0]:.2f}",
            "maintMarginBefore": f"{before[1]:.2f}",
            "equityWithLoanBefore": f"{before[2]:.2f}",
            "initMarginChange": f"{margin:.2f}",
            "maintMarginChange": f"{margin * 0.8:.2f}",
            "equityWithLoanChange": "0.00",
            "initMarginAfter": f"{before[0] + margin:.2f}",
            "maintMarginAfter": f"{before[1] + margin * 0.8:.2f}",
            "equityWithLoanAfter": f"{before[2]:.2f}",
            "commission": 1.0,
            "currency": inst.currency,
        }
        wire = {
            "orderId": req.orderId,
            "clientId": conn.client_id,
            "permId": 0,
            "account": account,
            "action": req.action,
            "totalQuantity": req.totalQuantity,
            "orderType": req.orderType,
            "lmtPrice": req.lmtPrice,
            "auxPrice": req.auxPrice,
            "tif": req.tif,
            "orderRef": req.orderRef,
            "algoStrategy": req.algoStrategy,
            "algoParams": req.algoParams,
        }
        conn.send(
            P.open_order_msg(conn.version, inst.view(req.contract.exchange or None), wire, "PreSubmitted", what_if)
        )

    def _cancel_order(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        order_id = r.int()
        order = self.broker.orders.get((conn.client_id or 0, order_id))
        if order is None:
            conn.send_error(order_id, 135, f"Can't find order with id ={order_id}")
            return
        if not order.active:
            conn.send_error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.",
            )
            return
        log.info("client %s: cancel order %d", conn.client_id, order_id)
        self.broker.cancel(order)
        conn.send_error(order_id, 202, "Order Canceled - reason:")

    def _req_global_cancel(self, conn: Connection, r: Reader) -> None:
        for order in self.broker.active_orders():
            self.broker.cancel(order, "Cancelled by global cancel")
            owner = self.clients.get(order.clientId)
            if owner is not None:
                owner.send_error(order.orderId, 202, "Order Canceled - reason:")

    def _req_open_orders(self, conn: Connection, r: Reader) -> None:
        for order in self.broker.active_orders():
            if order.clientId == conn.client_id:
                self._send_open_order(conn, order)
                conn.send(P.order_status_msg(order.wire()))
        conn.send([53, 1])

    def _req_all_open_orders(self, conn: Connection, r: Reader) -> None:
        for order in self.broker.active_orders():
            self._send_open_order(conn, order)
            conn.send(P.order_status_msg(order.wire()))
        conn.send([53, 1])

    def _req_completed_orders(self, conn: Connection, r: Reader) -> None:
        done = [o for o in self.broker.orders.values() if o.status in ("Filled", "Cancelled")]
        done.sort(key=lambda o: o.completedTime)
        for order in done:
            conn.send(P.completed_order_msg(conn.version, self._order_view(order), order.wire()))
        conn.send([102])

    def _req_executions(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        client_id = r.int()
        account = r.str()
        since = r.str()
        symbol = r.str().upper()
        sec_type = r.str().upper()
        exchange = r.str().upper()
        side = r.str().upper()
        since_ts = None
        if since:
            since_ts = _parse_filter_time(since)
        sides = {"BUY": "BOT", "SELL": "SLD", "BOT": "BOT", "SLD": "SLD"}
        for e in self.broker.executions:
            inst = self.instruments.get(e["key"])
            if inst is None:
                continue
            if client_id and e["clientId"] != client_id:
                continue
            if account and e["account"] != account:
                continue
            if since_ts is not None and e["time"] < since_ts:
                continue
            if symbol and symbol not in (inst.symbol.upper(), inst.key.upper()):
                continue
            if sec_type and sec_type != inst.secType:
                continue
            if exchange and exchange not in (e["exchange"], inst.exchange, "SMART" if inst.secType == "STK" else ""):
                continue
            if side and sides.get(side, side) != e["side"]:
                continue
            conn.send(P.exec_details_msg(req_id, inst.view(), e))
            if self.held_commissions is None or e["execId"] not in self.held_commissions:
                conn.send(P.commission_report_msg(e))
        conn.send([55, 1, req_id])

    HANDLERS: ClassVar[dict[int, Any]] = {
        P.START_API: _start_api,
        P.REQ_CURRENT_TIME: _req_current_time,
        P.REQ_IDS: _req_ids,
        P.REQ_MANAGED_ACCTS: _req_managed_accts,
        P.REQ_MARKET_DATA_TYPE: _req_market_data_type,
        P.REQ_CONTRACT_DETAILS: _req_contract_details,
        P.REQ_MKT_DATA: _req_mkt_data,
        P.CANCEL_MKT_DATA: _cancel_mkt_data,
        P.REQ_HISTORICAL_DATA: _req_historical_data,
        P.CANCEL_HISTORICAL_DATA: _noop,
        P.REQ_ACCOUNT_UPDATES: _req_account_updates,
        P.REQ_ACCOUNT_UPDATES_MULTI: _req_account_updates_multi,
        P.CANCEL_ACCOUNT_UPDATES_MULTI: _cancel_account_updates_multi,
        P.REQ_ACCOUNT_SUMMARY: _req_account_summary,
        P.CANCEL_ACCOUNT_SUMMARY: _cancel_account_summary,
        P.REQ_POSITIONS: _req_positions,
        P.CANCEL_POSITIONS: _cancel_positions,
        P.REQ_PNL: _req_pnl,
        P.CANCEL_PNL: _cancel_pnl,
        P.PLACE_ORDER: _place_order,
        P.CANCEL_ORDER: _cancel_order,
        P.REQ_GLOBAL_CANCEL: _req_global_cancel,
        P.REQ_OPEN_ORDERS: _req_open_orders,
        P.REQ_ALL_OPEN_ORDERS: _req_all_open_orders,
        P.REQ_AUTO_OPEN_ORDERS: _noop,
        P.REQ_COMPLETED_ORDERS: _req_completed_orders,
        P.REQ_EXECUTIONS: _req_executions,
        P.SET_SERVER_LOGLEVEL: _noop,
    }

    # -- broker listener ------------------------------------------------------------------------------------
    def order_update(self, order: SimOrder, *, open_order: bool) -> None:
        conn = self.clients.get(order.clientId)
        if conn is None:
            return
        status = P.order_status_msg(order.wire())
        if order.active:
            if open_order:
                self._send_open_order(conn, order)
            conn.send(status)
        else:
            conn.send(status)
            if open_order:
                self._send_open_order(conn, order)

    def order_rejected(self, client_id: int, order_id: int, code: int, message: str, order: SimOrder | None) -> None:
        log.info("client %s: order %d rejected: %d %s", client_id, order_id, code, message)
        conn = self.clients.get(client_id)
        if conn is None:
            return
        if order is None and code != 103:
            conn.send([3, order_id, "Inactive", 0.0, 0.0, 0.0, 0, 0, 0.0, client_id, "", 0.0])
        conn.send_error(order_id, code, message)

    def execution(self, order: SimOrder, execution: dict[str, Any]) -> None:
        conn = self.clients.get(order.clientId)
        inst = self.instruments[order.key]
        if self.held_commissions is not None:
            self.held_commissions[execution["execId"]] = execution
        if conn is not None:
            conn.send(P.exec_details_msg(-1, inst.view(), execution))
            if self.held_commissions is None:
                conn.send(P.commission_report_msg(execution))
        # positions, portfolio and account values before the order status, so that a client seeing the trade
        # filled already has the new positions and cash
        if inst.secType != "CASH":
            self.position_changed(order.account, inst.key)
        self.account_changed(order.account)
        self._push_accounts()
        if conn is not None:
            conn.send(P.order_status_msg(order.wire()))
            if not order.active:
                self._send_open_order(conn, order)

    def position_changed(self, account: str, key: str) -> None:
        inst = self.instruments[key]
        pos = self.broker.accounts[account].positions.get(key)
        qty, avg = (pos.quantity, pos.avgCost) if pos else (0.0, 0.0)
        msg = self._position_msg(account, inst, qty, avg)
        for conn in list(self.clients.values()):
            if conn.positions_sub:
                conn.send(msg)

    def account_changed(self, account: str) -> None:
        self._dirty_accounts.add(account)
        if self._account_push is None:
            self._account_push = asyncio.get_running_loop().call_soon(self._push_accounts)

    def _push_accounts(self) -> None:
        if self._account_push is not None:
            self._account_push.cancel()
        self._account_push = None
        dirty, self._dirty_accounts = self._dirty_accounts, set()
        for conn in list(self.clients.values()):
            if conn.account_sub in dirty:
                self._push_account(conn, conn.account_sub)
            for req_id, account in list(conn.multi_subs.items()):
                if account in dirty:
                    self._push_multi(conn, req_id, account)
            for req_id, account in list(conn.pnl_subs.items()):
                if account in dirty:
                    self._push_pnl(conn, req_id, account)

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
            tmp.write_text(json.dumps(self.broker.to_state(), indent=1, sort_keys=True))
            os.replace(tmp, self.state_file)
        except OSError as e:
            log.error("cannot write state file %s: %s", self.state_file, e)

    def _price_moved(self, inst: Instrument) -> None:
        for conn in list(self.clients.values()):
            for req_id, key in list(conn.streams.items()):
                if key == inst.key:
                    self._ticks(conn, req_id, inst, first=False)
        self.broker.work_all(inst.key)
        for acct in self.broker.accounts.values():
            if inst.key in acct.positions or inst.secType == "CASH":
                self.account_changed(acct.id)


def _parse_filter_time(text: str) -> float | None:
    text = text.strip()
    try:
        if "-" in text and " " not in text:
            return dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
        parts = text.split(" ")
        naive = dt.datetime.strptime(parts[0] + (parts[1] if len(parts) > 1 else "00:00:00"), "%Y%m%d%H:%M:%S")
        tz = ZoneInfo(parts[2]) if len(parts) > 2 else ZoneInfo("America/New_York")
        return naive.replace(tzinfo=tz).timestamp()
    except (ValueError, KeyError):
        return None


__all__ = ["Connection", "GatewayServer", "ib_time"]
