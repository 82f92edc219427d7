"""One client socket: the API handshake, length-prefixed framing, IB's pacing limit and simulated latency.

A Connection reads frames and hands each message to the server's dispatcher; everything it sends goes through
`send`, which applies the server's latency fault and stays silent while the server is frozen.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from . import messages as M
from . import protocol as P
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .server import GatewayServer

log = logging.getLogger("ibsim")


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
        self.closing = False  # closed by the gateway (pacing): what is still buffered goes unread
        self.overruns = 0  # messages over the pacing limit on this socket
        self.current_time_at: float | None = None  # when reqCurrentTime was last answered (monotonic)
        # subscriptions
        self.mkt_type = 1
        self.streams: dict[int, str] = {}
        self.snapshots: dict[int, asyncio.TimerHandle] = {}  # open snapshots: the end IB sends later, by reqId
        self.histories: dict[int, asyncio.TimerHandle] = {}  # historical requests not answered yet, by reqId
        self.account_sub: str | None = None
        self.account_cache: dict[tuple[str, str], str] = {}
        self.portfolio_cache: dict[str, tuple] = {}
        self.positions_sub = False
        self.multi_subs: dict[int, str] = {}
        self.multi_cache: dict[int, dict[tuple[str, str], str]] = {}
        self.summary_subs: dict[int, list[str]] = {}
        self.summary_cache: dict[int, dict[tuple[str, str, str], str]] = {}  # per request: (account, tag, currency)
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
        for end in self.snapshots.values():
            end.cancel()
        self.snapshots.clear()
        self.server.forget(self)
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
                if not self._take_api_prefix():
                    return
                continue
            payload = self._take_frame()
            if payload is None:
                return
            if self.server.frozen:
                continue  # half-open: framing stays aligned, the message goes nowhere
            text = payload.decode(errors="backslashreplace")
            if self.stage == "version":
                self._handshake(text)
                continue
            msg_id, fields = _message(text)
            self._pace()
            if self.closing:
                return
            self.server.dispatch(self, msg_id, fields)

    def _take_api_prefix(self) -> bool:
        """Takes the "API\\0" a client opens with; False while it has not all arrived."""
        if len(self.buffer) < 4:
            if not b"API\0".startswith(self.buffer):
                raise ProtocolError(f"expected the API handshake, got {self.buffer[:16]!r}")
            return False
        if self.buffer[:4] != b"API\0":
            raise ProtocolError(f"expected the API handshake, got {self.buffer[:16]!r}")
        self.buffer = self.buffer[4:]
        self.stage = "version"
        return True

    def _take_frame(self) -> bytes | None:
        """The next length-prefixed frame's payload, or None while it has not all arrived."""
        if len(self.buffer) < 4:
            return None
        (size,) = struct.unpack(">I", self.buffer[:4])
        if size == 0 or size > P.MAX_FRAME:
            raise ProtocolError(f"bad frame length {size}")
        if len(self.buffer) < 4 + size:
            return None
        payload = self.buffer[4 : 4 + size]
        self.buffer = self.buffer[4 + size :]
        return payload

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
        above 50/s and any burst above 50. Violating messages are still processed, until the scenario's
        `pacing.disconnectAfter`-th one: then the socket is closed, as IB documents ("No more than 50 messages can
        be sent from an API application ... to TWS per second ... If the 50 messages/second rate is exceeded, TWS
        will eventually close the connection", TWS API "Troubleshooting Common Errors").
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
        self.overruns += 1
        self.send_error(-1, 100, f"Max rate of messages per second has been exceeded:max={srv.pacing_max} rec=1")
        if srv.pacing_disconnect_after is not None and self.overruns >= srv.pacing_disconnect_after:
            log.warning("closing %s: %d messages over the pacing limit", self.peer, self.overruns)
            srv.pacing_disconnects += 1
            self.closing = True
            self.close()

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
        self.send(M.error_msg(self.version or 176, req_id, code, message))

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


def _message(text: str) -> tuple[int, list[str]]:
    """A message's id and its fields (the id first), as the client's null-separated text carries them."""
    fields = text.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    if not fields:
        raise ProtocolError("empty message")
    try:
        return int(fields[0]), fields
    except ValueError:
        raise ProtocolError(f"message id {fields[0][:20]!r} is not a number") from None
