"""The simulated broker behind the socket: orders placed, modified and cancelled, day rolls (working orders, fills
and executions: fills.py; the accounts: ledger.py).

Everything here runs on the server's event loop. The broker tells the server what to send through a `Listener`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .clock import SimClock
from .fills import DAY_TIFS, OrderBook
from .ledger import Account, Position
from .market import Instrument
from .order_rules import (
    DUPLICATE_ID,
    LOCATING,
    OFF_TICK,
    OUTSIDE_RTH_IGNORED,
    OUTSIDE_RTH_TYPES,
    held_warning,
    needs_locate,
    odd_lot_warning,
    off_tick,
    precaution_refusal,
    refusal,
)
from .protocol import OrderRequest
from .scenario import Scenario
from .simorder import COMPLETED, Listener, SimOrder

log = logging.getLogger("ibsim.broker")


class Broker(OrderBook):
    """Orders and fills: validation, placement, modification, cancels, executions, day rolls, and the state file.

    The accounts it books into and their valuation are the Ledger's (ledger.py).
    """

    def __init__(
        self,
        scenario: Scenario,
        instruments: dict[str, Instrument],
        listener: Listener,
        loop_getter: Any,
        clock: SimClock | None = None,
    ) -> None:
        self.scenario = scenario
        self.clock = clock or SimClock(scenario.clockStart)
        self.instruments = instruments
        self.listener = listener
        self._loop = loop_getter
        self.accounts: dict[str, Account] = {}
        for spec in scenario.accounts:
            acct = Account(spec.id, spec.baseCurrency, dict(spec.cash))
            for p in spec.positions:
                inst = instruments[p.symbol]
                avg = p.avgCost if p.avgCost is not None else inst.price * inst.multiplier
                acct.positions[p.symbol] = Position(p.quantity, float(avg))
            self.accounts[spec.id] = acct
        self.default_account = scenario.accounts[0].id
        self.orders: dict[tuple[int, int], SimOrder] = {}
        # The highest order id each client has sent, refused orders included: IB takes a new order only above it.
        self.highest_order_id: dict[int, int] = {}
        self.by_perm: dict[int, SimOrder] = {}
        self.executions: list[dict[str, Any]] = []
        now = time.time()
        self.next_perm = 1_000_000_000 + int(now) % 100_000_000
        self.exec_prefix = f"{0xE0D5 + scenario.seed % 4096:08x}"
        self.exec_seq = int(now * 1000) & 0x0FFFFFFF
        self.hold = False
        self.reject_next: tuple[int, str] | None = None
        self.drop_next = 0  # new orders to lose without a word (the fault drop_next_orders)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._deadlines: dict[int, float | None] = {}
        self._clock_timer: asyncio.TimerHandle | None = None  # the next DAY expiry or OPG opening (fills.py)
        self._clock_due = 0.0
        c = scenario.commission
        self.comm = {
            "stockPerShare": c.get("stockPerShare", 0.005),
            "stockMin": c.get("stockMin", 1.0),
            "stockMaxPct": c.get("stockMaxPct", 1.0),
            "fxBps": c.get("fxBps", 0.2),
            "fxMin": c.get("fxMin", 2.0),
            "futPerContract": c.get("futPerContract", 0.85),
        }

    # -- ids ---------------------------------------------------------------------------------------------------
    def next_order_id(self, client_id: int) -> int:
        ids = [oid for (cid, oid) in self.orders if cid == client_id]
        return max(max(ids, default=0), self.highest_order_id.get(client_id, 0)) + 1

    def _perm(self) -> int:
        self.next_perm += 1
        return self.next_perm

    def margin_shortfall(self, req: OrderRequest, inst: Instrument, replacing: SimOrder | None = None) -> str | None:
        """IB's rejection text when the order (or the modification of `replacing`) would take the initial margin
        above the equity with loan value.

        Orders still working in the instrument count as if filled (IB reserves margin for them); an order that
        lowers the margin (a closing order) is never refused.
        """
        account = replacing.account if replacing is not None else req.account or self.default_account
        qty = req.totalQuantity - (replacing.filled if replacing is not None else 0.0)
        working = self.working_quantity(account, inst.key, without=replacing)
        return self.initial_margin_shortfall(account, inst, qty if req.action == "BUY" else -qty, working)

    def working_quantity(self, account: str, key: str, without: SimOrder | None = None) -> float:
        """Signed quantity still to fill of the account's working orders in `key` (but `without`)."""
        return sum(
            o.remaining if o.action == "BUY" else -o.remaining
            for o in self.active_orders()
            if o.account == account and o.key == key and o is not without
        )

    def what_if_commission(self, req: OrderRequest, inst: Instrument) -> tuple[float, str]:
        """The commission a fill of the whole order at today's quote is charged (execute() charges the same)."""
        qty = float(req.totalQuantity)
        px = inst.ask if req.action == "BUY" else inst.bid
        if req.orderType in ("LMT", "STP LMT") and req.lmtPrice:
            px = min(px, req.lmtPrice) if req.action == "BUY" else max(px, req.lmtPrice)
        return self._commission(inst, qty, qty * px)

    def place(self, client_id: int, req: OrderRequest, inst: Instrument) -> None:
        key = (client_id, req.orderId)
        existing = self.orders.get(key)
        if existing is not None:
            self._modify(existing, req, inst)
            return
        if req.orderId <= self.highest_order_id.get(client_id, 0):
            # IB's message codes: "103 Duplicate order ID." for an id at or below one the client already used
            self.listener.order_rejected(client_id, req.orderId, 103, DUPLICATE_ID, None)
            return
        self.highest_order_id[client_id] = req.orderId
        if self.drop_next > 0:  # lost on the way to IB's servers: no status, no error, in no list, ever
            self.drop_next -= 1
            log.info("fault: order %d of client %d dropped", req.orderId, client_id)
            return
        if self.reject_next is not None:
            code, message = self.reject_next
            self.reject_next = None
            self.listener.order_rejected(client_id, req.orderId, code, message, None)
            return
        reason = refusal(req, inst, self.accounts)
        if reason is None and off_tick(req, inst):
            self.listener.order_rejected(client_id, req.orderId, 110, OFF_TICK, None)
            return
        gateway_refusal = (
            None
            if reason
            else precaution_refusal(req, inst, self.scenario.precautions, self.rate(inst.currency, "USD"))
        )
        if gateway_refusal is not None:  # the gateway's own check, before the order leaves for IB's margin check
            self.listener.order_rejected(client_id, req.orderId, *gateway_refusal, None)
            return
        if reason is None and self.scenario.marginEnforce:
            reason = self.margin_shortfall(req, inst)
            if reason is not None:
                self.listener.order_rejected(client_id, req.orderId, 201, reason, None)
                return
        if reason is not None:
            self.listener.order_rejected(client_id, req.orderId, 201, f"Order rejected - reason:{reason}", None)
            return
        account = req.account or self.default_account
        exchange = req.contract.exchange or inst.exchange
        order = SimOrder.placed(req, client_id, self._perm(), account, inst.key, exchange, self.clock.time())
        self.orders[key] = order
        self.by_perm[order.permId] = order
        log.info(
            "order %s/%s %s %s %g %s %s%s tif=%s ref=%r",
            client_id,
            order.orderId,
            order.action,
            inst.key,
            order.totalQuantity,
            order.orderType,
            "" if order.lmtPrice is None else f"lmt={order.lmtPrice} ",
            "" if order.auxPrice is None else f"aux={order.auxPrice} ",
            order.tif,
            order.orderRef,
        )
        self._start(order, inst)
        self._schedule_time_check(order)

    def _start(self, order: SimOrder, inst: Instrument) -> None:
        """A new order accepted: PreSubmitted, then held (a locate, a closed market) or submitted and worked."""
        order.status = "PreSubmitted"
        self.listener.order_update(order, open_order=True)
        if self.scenario.hours == "regular" and order.outsideRth and order.orderType not in OUTSIDE_RTH_TYPES:
            self.listener.order_warning(order, 2109, OUTSIDE_RTH_IGNORED)
        if odd_lot := odd_lot_warning(order, inst, self.rate(inst.currency, "USD")):
            self.listener.order_warning(order, 399, odd_lot)  # a note: the order goes on
        if self._held_for_locate(order, inst):
            return
        opens = self.closed_until(order)
        if opens is not None:
            # Held PreSubmitted, as IB holds it, with warning 399 naming the open; `work` submits it at the open.
            self.listener.order_warning(order, 399, held_warning(order, inst, opens))
            self.listener.state_changed()
            return
        order.status = "Submitted"
        self.listener.order_update(order, open_order=True)
        self.listener.state_changed()
        # The first fill comes back from the exchange a moment after IB's acknowledgement, not in the same burst.
        self.work(order, delay=self.scenario.fillDelayMs / 1000)

    def _held_for_locate(self, order: SimOrder, inst: Instrument) -> bool:
        held = self.accounts[order.account].positions.get(inst.key)
        if not needs_locate(order, inst, held.quantity if held else 0.0):
            return False
        order.whyHeld = "locate"
        self.listener.order_update(order, open_order=True)
        self.listener.order_warning(order, 404, LOCATING)
        self.listener.state_changed()
        return True

    def _modify(self, order: SimOrder, req: OrderRequest, inst: Instrument) -> None:
        if not order.active:
            self.listener.order_rejected(order.clientId, order.orderId, 103, DUPLICATE_ID, None)
            return
        reason = refusal(req, inst, self.accounts)
        if reason is None and inst.key != order.key:
            reason = "The contract of an order cannot be modified"
        if reason is None and req.totalQuantity < order.filled:
            reason = "The new quantity is below the filled quantity"
        if reason is None and off_tick(req, inst):
            # the working order stays as it was, as for any refused modification
            self.listener.order_rejected(order.clientId, order.orderId, 110, OFF_TICK, order)
            return
        if reason is not None:
            # IB keeps the working order and reports the rejected modification as a warning-free error
            self.listener.order_rejected(order.clientId, order.orderId, 201, f"Order rejected - reason:{reason}", order)
            return
        shortfall = self.margin_shortfall(req, inst, replacing=order) if self.scenario.marginEnforce else None
        if shortfall is not None:
            self.listener.order_rejected(order.clientId, order.orderId, 201, shortfall, order)
            return
        order.totalQuantity = float(req.totalQuantity)
        order.lmtPrice = req.lmtPrice
        order.auxPrice = req.auxPrice
        order.orderType = req.orderType
        order.tif = req.tif or order.tif
        order.orderRef = req.orderRef
        order.triggered = False
        self._deadlines.pop(order.permId, None)  # the tif may have changed
        log.info("order %s/%s modified: %g %s", order.clientId, order.orderId, order.totalQuantity, order.orderType)
        if order.remaining <= 0:
            self._finish(order, "Filled")
            return
        self.listener.order_update(order, open_order=True)
        self.listener.state_changed()
        self.work(order)
        self._schedule_time_check(order)

    def request_cancel(self, order: SimOrder) -> None:
        order.status = "PendingCancel"  # on its way to the exchange: it may still fill until confirmed
        self.listener.order_update(order, open_order=False)
        self.listener.state_changed()

    # -- day roll ----------------------------------------------------------------------------------------------
    def _end_day(self) -> None:
        """IB lists the current day's completed orders only (its API docs' "Completed Orders"; ib_insync #128): the
        day's go off the list, DAY orders expired at the close among them, and so do its executions."""
        for order in self.orders.values():
            order.earlierDay = order.earlierDay or order.status in COMPLETED
        self.executions.clear()  # reqExecutions reports the current day's; the opening auction's are the new day's
        for acct in self.accounts.values():
            acct.realized.clear()
            for held in (acct.positions, acct.fx):
                for key, pos in list(held.items()):
                    pos.realized = 0.0
                    if pos.quantity == 0:
                        held.pop(key)

    def roll_day(self) -> None:
        """The clock has moved to the next weekday: yesterday's DAY orders expire (with hours: always too), the day
        ends, and the new one starts: OPG orders whose opening has come execute, held orders are worked."""
        now = self.clock.time()
        for order in self.active_orders():
            if order.tif in DAY_TIFS and order.status == "Submitted" and self._deadline(order) is None:
                self._deadlines[order.permId] = now  # hours: always has no close: the roll is the day's end
            self._expire_if_ended(order)
        self._end_day()
        self.time_passed(new_day=True)
        for acct in self.accounts.values():
            self.listener.account_changed(acct.id)
        self.listener.state_changed()
