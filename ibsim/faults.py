"""Faults and controls: what tests and scenario files do to the gateway behind its clients' backs.

Each is a method marked with `@fault` (ibsim/controls.py): the mark is the one declaration from which
ThreadedGateway's twin, the scenario's list of actions and the check of their arguments are derived. A fault a
scenario may schedule says so in its mark; its arguments are the method's parameters, their types its annotations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo

from . import messages as M
from .clock import parse_instant
from .controls import Action, actions, fault, query
from .orders import OrderDesk
from .protocol import REQUEST_NAMES
from .scenario import Precautions

log = logging.getLogger("ibsim")
NEW_YORK = ZoneInfo("America/New_York")

KNOWN_ERRORS = {
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and TWS has been restored- data lost.",
    1102: "Connectivity between IB and TWS has been restored- data maintained.",
    2103: "Market data farm connection is broken:usfarm",
    2104: "Market data farm connection is OK:usfarm",
    2105: "HMDS data farm connection is broken:ushmds",
    2106: "HMDS data farm connection is OK:ushmds",
    2157: "Sec-def data farm connection is broken:secdefil",
    2158: "Sec-def data farm connection is OK:secdefil",
}


class Faults(OrderDesk):
    """Connection faults (drops, refusals, half-open sockets, errors, latency), broker faults (rejections, held
    fills and commission reports, partial fills), the market, and the clock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reopen: asyncio.TimerHandle | None = None
        self._timers: list[asyncio.TimerHandle] = []

    def schedule_faults(self) -> None:
        """The scenario's faults, each at its time after start."""
        loop = asyncio.get_running_loop()
        for spec in self.scenario.faults:
            self._timers.append(loop.call_later(spec.at, self.run_scheduled, spec.action, spec.args))

    def run_scheduled(self, action: str, args: dict[str, Any]) -> None:
        log.info("scheduled fault: %s %s", action, args)
        declared = SCHEDULED[action]
        getattr(self, declared.method)(**declared.fixed, **args)

    @fault(scheduled=True)
    def drop_connections(self) -> int:
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
            self.forget(conn)
        log.info("fault: dropped %d connection(s)", len(conns))
        return len(conns)

    @fault()
    def close_after_connect_clock(self, delay: float = 0.0) -> None:
        """The next connection's first reqCurrentTime (a client's connect asks one) is answered `delay` seconds
        later, and the socket closed right behind the answer: IB Gateway going down for its nightly restart just as
        a client connects."""
        self.closing_after_connect_clock = max(0.0, float(delay))
        log.info("fault: the next connect's clock answer closes the socket")

    @fault(scheduled=True)
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

    @fault(scheduled=True)
    def set_latency(self, fixed: float = 0.0, jitter: float = 0.0) -> None:
        self.latency = (max(0.0, float(fixed)), max(0.0, float(jitter)))
        log.info("fault: latency %.3fs + up to %.3fs jitter", *self.latency)

    @fault(scheduled=True)
    def reject_next_order(self, code: int = 201, message: str = "Order rejected - reason:Simulated rejection") -> None:
        self.broker.reject_next = (code, message)

    @fault()
    def drop_next_orders(self, count: int = 1) -> None:
        """The next `count` new orders from any client are lost without a word: no status, no error, not in the
        open, completed or executed lists. IB's paper server does this to some orders of a batch placed within one
        second (QuantConnect/Lean.Brokerages.InteractiveBrokers#93: "some receive *zero* callbacks, ever")."""
        self.broker.drop_next = max(0, int(count))

    @fault(aliases={"hold_fills": {"on": True}, "release_fills": {"on": False}})
    def hold_fills(self, on: bool = True) -> None:
        self.broker.hold = bool(on)
        log.info("fault: fills %s", "held" if on else "released")
        if on:
            # A held order's pending execution would be a no-op when it fires, and kept it from being worked on
            # release: released, an order waited out the delay it was scheduled with before the hold.
            for order in self.broker.active_orders():
                self.broker._stop_timer(order)
        else:
            self.broker.work_all()

    @fault()
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
                conn.send(M.commission_report_msg(execution))

    @fault()
    def delay_executions(self, seconds: float = 0.0) -> None:
        """From now on each execution's report (execDetails and its commission report) reaches the client `seconds`
        after the order's status that counts it: IB promises no order among an order's messages ("There are not
        guaranteed to be orderStatus callbacks for every change in order status", TWS API, Order Submission), and
        reqExecutions lists the execution from the start. 0: the report leads the status again."""
        self.execution_lag = max(0.0, float(seconds))
        log.info("fault: execution reports %.3fs after their order status", self.execution_lag)

    @fault()
    def set_max_fill_size(self, size: float, forex: bool = False) -> None:
        """Largest execution; bigger orders fill in several. `forex`: of an IDEALPRO order (which otherwise fills
        in one execution), as IDEALPRO fills a large order in parts."""
        if size <= 0:
            raise ValueError("maxFillSize must be positive")
        if forex:
            self.scenario.maxForexFillSize = float(size)
        else:
            self.scenario.maxFillSize = float(size)

    @fault()
    def correct_execution(self, exec_id: str, price: float | None = None, shares: float | None = None) -> str:
        """IB corrects an execution: a new one whose execId differs only in the digits after the final period
        ("...01.01" -> "...01.02") carries the corrected price or shares, with the same commission, and is sent as
        any execution is; the account and the order move by the difference. Returns the correction's execId."""
        versions = {e["execId"]: e for e in self.broker.executions}
        if exec_id not in versions:
            raise ValueError(f"no execution {exec_id!r} today")
        old = versions[exec_id]
        base = exec_id.rpartition(".")[0]
        latest = max(int(i.rpartition(".")[2]) for i in versions if i.rpartition(".")[0] == base)
        new = {**old, "execId": f"{base}.{latest + 1:02d}"}
        new["price"] = float(price) if price is not None else old["price"]
        new["shares"] = float(shares) if shares is not None else old["shares"]
        order = self.broker.by_perm[old["permId"]]
        inst = self.instruments[old["key"]]
        account = self.broker.accounts[old["account"]]
        sign = 1.0 if old["side"] == "BOT" else -1.0
        self.broker.book(account, inst, -sign * old["shares"], old["price"], 0.0, old["commissionCurrency"])
        self.broker.book(account, inst, sign * new["shares"], new["price"], 0.0, old["commissionCurrency"])
        order.filled += new["shares"] - old["shares"]
        new["cumQty"] = order.filled
        self.broker.executions.append(new)
        log.info("fault: execution %s corrected by %s (%g @ %s)", exec_id, new["execId"], new["shares"], new["price"])
        self.execution(order, new)
        return str(new["execId"])

    @fault()
    def order_precautions(
        self, bypass: bool = False, size_limit: float | None = 500, total_value_limit: float | None = 100_000
    ) -> None:
        """IB Gateway's order precautions for API orders from now on; the defaults are a fresh gateway's (not
        bypassed): an order beyond the Size Limit gets 383, beyond the Total Value Limit (USD) 451. None: no limit."""
        self.scenario.precautions = Precautions(bool(bypass), size_limit, total_value_limit)
        log.info("fault: order precautions %s", self.scenario.precautions)

    @fault(scheduled=True)
    def read_only_api(self, on: bool = True) -> None:
        """IB Gateway's "Read-Only API" from now on: orders, cancels and the order lists get 321 (the lists never
        end); False: write access, as gateway-image configures a paper gateway."""
        self.scenario.readOnlyApi = bool(on)
        log.info("fault: API %s", "read-only" if on else "writable")

    @fault(scheduled=True)
    def cancel_delay(self, seconds: float) -> None:
        """From now on the exchange confirms the cancel of a working order `seconds` after it is asked for; until
        then the order is PendingCancel, may still fill, and a second cancel gets 161 (default 0.01 s)."""
        if seconds < 0:
            raise ValueError("seconds must be 0 or more")
        self.scenario.cancelDelayMs = float(seconds) * 1000
        log.info("fault: cancels confirmed after %.3fs", seconds)

    @fault(aliases={"freeze": {"on": True}, "unfreeze": {"on": False}})
    def freeze(self, on: bool = True) -> None:
        self.frozen = bool(on)
        log.info("fault: %s", "frozen (half-open: nothing read, nothing sent)" if on else "unfrozen")

    @fault(scheduled=True)
    def stall_request(self, request: str, seconds: float = 0.0) -> None:
        """The next `request` (a TWS request name: reqCompletedOrders, reqExecutions, startApi...) from any client
        is answered `seconds` late; 0: never answered (the client waits until its own timeout)."""
        by_name = {name.lower(): msg_id for name, msg_id in REQUEST_NAMES.items()}
        msg_id = by_name.get(request.lower())
        if msg_id is None:
            raise ValueError(f"{request!r} is not a TWS request ibsim knows ({', '.join(sorted(REQUEST_NAMES))})")
        if seconds < 0:
            raise ValueError("seconds must be 0 (never answered) or more")
        self.stalls[msg_id] = float(seconds) if seconds else None
        log.info("fault: next %s %s", request, f"answered {seconds:.1f}s late" if seconds else "never answered")

    @fault(scheduled=True)
    def send_error(self, code: int, message: str = "", req_id: int = -1) -> None:
        if not message:
            message = KNOWN_ERRORS.get(code, f"Simulated error {code}")
        for conn in list(self.clients.values()):
            conn.send_error(req_id, code, message)
        log.info("fault: error %d %r sent to %d client(s)", code, message, len(self.clients))

    @fault(scheduled=True)
    def restart(self, down_seconds: float = 0.0) -> None:
        self.frozen = False
        self.drop_connections()
        if down_seconds > 0:
            self.refuse_connections(down_seconds)
        log.info("fault: restart (down %.1fs), state kept", down_seconds)

    @fault(scheduled=True)
    def set_price(self, symbol: str, price: float) -> None:
        inst = self._instrument(symbol)
        inst.set_price(float(price))
        log.info("price %s = %s", inst.key, inst.price)
        self.price_moved(inst)

    @fault(scheduled=True)
    def roll_day(self) -> None:
        """A new trading day: the clock moves to the same New York time on the next weekday (across a change of
        daylight saving time too), then orders roll (Broker.roll_day)."""
        now = self.clock.now(NEW_YORK)
        days = {4: 3, 5: 2}.get(now.weekday(), 1)
        day = now.date() + dt.timedelta(days=days)
        self.clock.set(dt.datetime.combine(day, now.time(), now.tzinfo))  # the zone's offset on that day
        self.clock_moved()
        log.info("new trading day: %s", self.clock.now(NEW_YORK).strftime("%a %Y-%m-%d %H:%M %Z"))
        self.broker.roll_day()

    @fault()
    def set_time(self, when: dt.datetime | str) -> None:
        """Moves the clock to `when` (aware datetime or ISO 8601 text); it runs on from there."""
        self.clock.set(parse_instant(when) if isinstance(when, str) else when)
        log.info("clock set to %s", self.clock.now().isoformat())
        self.clock_moved()
        self.broker.time_passed()  # DAY orders past their close expire; orders held for an open that has come work

    @fault()
    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.clock_moved()
        self.broker.time_passed()

    @query
    def now(self) -> dt.datetime:
        return self.clock.now()


# Scenario actions, read off the marks above: ibsim/scenario.py validates against them.
SCHEDULED: dict[str, Action] = actions(Faults)
