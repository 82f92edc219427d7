"""Working orders: when they may trade, their fills and executions, and how the clock ends them (a DAY order at its
session's end, an OPG order at its opening). broker.py places, modifies and cancels them and rolls the day.

Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from typing import Any

from .clock import SimClock
from .ledger import Ledger
from .market import Instrument
from .order_rules import DAY_EXPIRED, closed_until, commission, day_order_end, opening_of
from .scenario import Scenario
from .simorder import Listener, SimOrder, ib_time

log = logging.getLogger("ibsim.broker")

DAY_TIFS = ("DAY", "")


class OrderBook(Ledger):
    """The working orders and their executions; Broker (broker.py) sets the state below and adds placement."""

    scenario: Scenario
    clock: SimClock
    listener: Listener
    orders: dict[tuple[int, int], SimOrder]
    executions: list[dict[str, Any]]
    exec_prefix: str
    exec_seq: int
    hold: bool
    comm: dict[str, float]
    _loop: Any
    _timers: dict[int, asyncio.TimerHandle]
    # permId -> the instant (epoch seconds) the clock ends a DAY order or opens an OPG one; None: not by the clock
    _deadlines: dict[int, float | None]
    _clock_timer: asyncio.TimerHandle | None
    _clock_due: float

    def _exec_id(self) -> str:
        self.exec_seq = (self.exec_seq + 1) & 0xFFFFFFFF
        return f"{self.exec_prefix}.{self.exec_seq:08x}.01.01"

    def active_orders(self) -> list[SimOrder]:
        return [o for o in self.orders.values() if o.active]

    def closed_until(self, order: SimOrder) -> dt.datetime | None:
        """When the order's market next opens for it, or None while it may trade (order_rules.closed_until)."""
        inst = self.instruments[order.key]
        return closed_until(order, inst, self.clock.now(), self.scenario.hours, self.scenario.timeZone)

    def cancel(self, order: SimOrder, reason: str = "") -> None:
        self._stop_timer(order)
        order.whyHeld = ""
        self._finish(order, "Cancelled", completed_status=reason or "Cancelled by Trader")

    def _finish(self, order: SimOrder, status: str, completed_status: str = "") -> None:
        self._stop_timer(order)
        self._deadlines.pop(order.permId, None)
        order.complete(status, ib_time(self.clock.time()), completed_status)
        self.listener.order_update(order, open_order=True)
        self.listener.state_changed()

    def _stop_timer(self, order: SimOrder) -> None:
        handle = self._timers.pop(order.permId, None)
        if handle is not None:
            handle.cancel()

    # -- the clock -------------------------------------------------------------------------------------------
    def _deadline(self, order: SimOrder) -> float | None:
        """When the clock ends the order's wait: a DAY order's expiry (its session's end), an OPG order's opening;
        None for other orders, and with hours: always (roll_day ends and opens the day)."""
        if order.permId not in self._deadlines:
            inst = self.instruments[order.key]
            hours = self.scenario.hours
            at = None
            if order.tif in DAY_TIFS:
                at = day_order_end(order, inst, hours, self.scenario.timeZone)
            elif order.tif == "OPG":
                at = opening_of(order, inst, hours)
            self._deadlines[order.permId] = None if at is None else at.timestamp()
        return self._deadlines[order.permId]

    def _come(self, order: SimOrder) -> bool:
        deadline = self._deadline(order)
        return deadline is not None and deadline <= self.clock.time()

    def _expire_if_ended(self, order: SimOrder) -> bool:
        """A DAY order whose session has ended is cancelled, as IB cancels it at the close (partial fills stay)."""
        if not (order.active and order.tif in DAY_TIFS and self._come(order)):
            return False
        order.whyHeld = ""
        self._finish(order, "Cancelled", DAY_EXPIRED)
        return True

    def time_passed(self, new_day: bool = False) -> None:
        """The clock has moved (set, advanced, rolled or run on): DAY orders whose session has ended expire, OPG
        orders whose opening has come execute there, held orders whose session has opened are worked. `new_day`
        (roll_day) opens the day with hours: always too, which has no opening."""
        now = self.clock.time()
        for order in self.active_orders():
            if new_day and order.tif == "OPG" and self._deadline(order) is None:
                self._deadlines[order.permId] = now  # hours: always has no opening: the roll is the day's
            self._expire_if_ended(order)
        self.work_all()
        self._schedule_time_check()

    def _schedule_time_check(self, order: SimOrder | None = None) -> None:
        """A timer for the next instant the clock, running on, ends a DAY order or opens an OPG one (`order`: that
        order's only, if sooner than the timer's)."""
        now = self.clock.time()
        if order is not None:
            due = self._deadline(order)
            if due is None or due <= now or (self._clock_timer is not None and self._clock_due <= due):
                return
        else:
            if self._clock_timer is not None:
                self._clock_timer.cancel()
                self._clock_timer = None
            times = [d for o in self.active_orders() if (d := self._deadline(o)) is not None and d > now]
            if not times:
                return
            due = min(times)
        if self._clock_timer is not None:
            self._clock_timer.cancel()
        self._clock_due = due
        self._clock_timer = self._loop().call_later(due - now, self._timer_fired)

    def _timer_fired(self) -> None:
        self._clock_timer = None
        self.time_passed()

    def _open(self, order: SimOrder) -> None:
        """An OPG order at its opening: executes whole at the quote (ibsim has no auction), or, a limit the opening
        does not reach, is cancelled (an unexecuted opening order does not carry on into the session)."""
        inst = self.instruments[order.key]
        if order.status == "PreSubmitted":  # held while its market was closed: released to the opening
            order.status = "Submitted"
            self.listener.order_update(order, open_order=False)
        px = self._marketable(order, inst)
        if px is not None:
            self.execute(order, order.remaining, px)
        else:
            self._finish(order, "Cancelled", "Cancelled: opening order not marketable")

    # -- fills -----------------------------------------------------------------------------------------------
    def fill_price(self, order: SimOrder) -> float | None:
        """The price the order would execute at now, or None while it is not marketable."""
        if order.tif == "OPG" and not self._come(order):
            return None  # waits for its opening
        return self._marketable(order, self.instruments[order.key])

    def _marketable(self, order: SimOrder, inst: Instrument) -> float | None:
        buy = order.action == "BUY"
        kind = order.orderType
        if kind in ("STP", "STP LMT"):
            if not order.triggered:
                stop = order.auxPrice or 0.0
                if (buy and inst.price >= stop) or (not buy and inst.price <= stop):
                    order.triggered = True
                    log.info("stop %s/%s triggered at %s", order.clientId, order.orderId, inst.price)
                else:
                    return None
            kind = "MKT" if kind == "STP" else "LMT"
        px = inst.ask if buy else inst.bid
        if kind == "LMT":
            limit = order.lmtPrice or 0.0
            eps = inst.tick / 1000
            if (buy and px > limit + eps) or (not buy and px < limit - eps):
                return None
        return px

    def work(self, order: SimOrder, delay: float = 0.0) -> None:
        """Schedules the next execution of `order` if it can fill now."""
        if not order.active or self._expire_if_ended(order):
            return
        if self.hold or order.whyHeld == "locate" or order.permId in self._timers:
            return
        if order.tif == "OPG":
            if self._come(order):
                self._open(order)
            return
        if self.closed_until(order) is not None:
            return
        if order.status == "PreSubmitted":  # held outside its session: the session has opened
            order.status = "Submitted"
            self.listener.order_update(order, open_order=False)
            self.listener.state_changed()
        if self.fill_price(order) is None:
            if order.tif == "IOC":
                self.cancel(order, "Cancelled: IOC order not marketable")
            return
        loop = self._loop()
        self._timers[order.permId] = loop.call_later(delay, self._fill_next, order)

    def _fill_next(self, order: SimOrder) -> None:
        self._timers.pop(order.permId, None)
        if not order.active or self._expire_if_ended(order) or self.hold:
            return
        px = self.fill_price(order)
        if px is None:
            if order.tif == "IOC":
                self.cancel(order, "Cancelled: IOC remainder")
            return
        inst = self.instruments[order.key]
        qty = order.remaining
        # A huge order fills in at most maxExecutionsPerOrder executions: 20,000 of them kept the loop busy with
        # account pushes for minutes and starved every other client. IDEALPRO fills at once, unless told otherwise.
        largest = (self.scenario.maxForexFillSize or qty) if inst.secType == "CASH" else self.scenario.maxFillSize
        qty = min(qty, max(largest, math.ceil(order.totalQuantity / self.scenario.maxExecutionsPerOrder)))
        self.execute(order, qty, px)
        if order.active and order.remaining > 0:
            self.work(order, delay=self.scenario.fillDelayMs / 1000)

    def work_all(self, key: str | None = None) -> None:
        for order in self.active_orders():
            if key is None or order.key == key:
                self.work(order)

    # -- executions ------------------------------------------------------------------------------------------
    def _commission(self, inst: Instrument, cum_qty: float, cum_value: float) -> tuple[float, str]:
        return commission(self.comm, inst, cum_qty, cum_value, self.usd_rate(inst.currency))

    def execute(self, order: SimOrder, qty: float, price: float) -> dict[str, Any]:
        inst = self.instruments[order.key]
        acct = self.accounts[order.account]
        prev_filled = order.filled
        order.filled = prev_filled + qty
        order.avgFillPrice = (order.avgFillPrice * prev_filled + price * qty) / order.filled
        order.lastFillPrice = price
        total_comm, comm_cur = self._commission(inst, order.filled, order.avgFillPrice * order.filled)
        commission = round(max(total_comm - order.commission, 0.0), 6)
        order.commission += commission
        signed = qty if order.action == "BUY" else -qty
        realized = self.book(acct, inst, signed, price, commission, comm_cur)
        now = self.clock.time()
        execution = {
            "execId": self._exec_id(),
            "orderId": order.orderId,
            "clientId": order.clientId,
            "permId": order.permId,
            "account": order.account,
            "key": inst.key,
            "symbol": inst.key,
            "secType": inst.secType,
            "exchange": inst.exec_exchange,
            "side": "BOT" if order.action == "BUY" else "SLD",
            "shares": qty,
            "price": price,
            "time": now,
            "timeText": ib_time(now),
            "cumQty": order.filled,
            "avgPrice": order.avgFillPrice,
            "orderRef": order.orderRef,
            "commission": commission,
            "commissionCurrency": comm_cur,
            "realizedPNL": realized,
            "lastLiquidity": 2,
        }
        self.executions.append(execution)
        inst.volume += qty
        log.info(
            "fill %s/%s %s %g %s @ %s (%g/%g) commission %.2f %s",
            order.clientId,
            order.orderId,
            execution["side"],
            qty,
            inst.key,
            price,
            order.filled,
            order.totalQuantity,
            commission,
            comm_cur,
        )
        if order.remaining <= 1e-9:
            order.complete("Filled", ib_time(now))
            self._deadlines.pop(order.permId, None)
        self.listener.execution(order, execution)
        self.listener.state_changed()
        return execution
