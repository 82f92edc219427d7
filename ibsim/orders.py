"""Order requests: placeOrder (and whatIf), cancelOrder, reqGlobalCancel, open, completed orders, executions.

The broker (ibsim/broker.py) keeps the orders and decides fills; this layer reads the requests and reports what
the broker did to the client that owns the order, in the order IB sends it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo

from . import messages as M
from . import protocol as P
from .connection import Connection
from .ledger import INIT_MARGIN, MAINT_MARGIN
from .market import Instrument
from .marketdata import MarketDesk
from .messages import ContractView
from .order_rules import OFF_TICK, off_tick, refusal
from .protocol import Reader
from .simorder import COMPLETED, SimOrder

log = logging.getLogger("ibsim")

MISSING_EXCHANGE = "Error validating request.-'bN' : cause - Missing order exchange."


class OrderDesk(MarketDesk):
    """The order requests, and the broker's listener: order updates, rejections and executions go out here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Commission reports held back (fault: a report that arrives late), by execId.
        self.held_commissions: dict[str, dict[str, Any]] | None = None
        # Seconds an execution's report trails its order's status (the fault delay_executions); 0: it leads it.
        self.execution_lag = 0.0

    def _order_view(self, order: SimOrder) -> ContractView:
        return self.instruments[order.key].view(order.exchange)

    def _send_open_order(self, conn: Connection, order: SimOrder) -> None:
        conn.send(M.open_order_msg(conn.version, self._order_view(order), order.wire(), order.status))

    def _place_order(self, conn: Connection, r: Reader) -> None:
        req = P.read_place_order(r, conn.version)
        if req.leftover:
            self.protocol_mismatches += 1
            log.warning("client %s: placeOrder %d had %d unread fields", conn.client_id, req.orderId, req.leftover)
        if not req.contract.exchange:
            # IB validates the request before it looks the contract up: an order with no exchange gets 321 even
            # for a symbol it does not know (as IB Gateway answers, e.g. StrateQueue/StrateQueue#20).
            conn.send_error(req.orderId, 321, MISSING_EXCHANGE)
            return
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
        reason = refusal(req, inst, self.broker.accounts)
        if reason is not None:
            conn.send_error(req.orderId, 201, f"Order rejected - reason:{reason}")
            return
        if off_tick(req, inst):
            conn.send_error(req.orderId, 110, OFF_TICK)
            return
        account = req.account or self.broker.default_account
        v = self.broker.valuation(account)
        signed = req.totalQuantity if req.action == "BUY" else -req.totalQuantity
        init = self.broker.margin_change(account, inst, signed, self.broker.working_quantity(account, inst.key))
        maint = init * MAINT_MARGIN.get(inst.secType, 0.0) / INIT_MARGIN.get(inst.secType, 1.0)
        commission, commission_currency = self.broker.what_if_commission(req, inst)
        before = (v["InitMarginReq"], v["MaintMarginReq"], v["EquityWithLoanValue"])
        what_if = {
            "initMarginBefore": f"{before[0]:.2f}",
            "maintMarginBefore": f"{before[1]:.2f}",
            "equityWithLoanBefore": f"{before[2]:.2f}",
            "initMarginChange": f"{init:.2f}",
            "maintMarginChange": f"{maint:.2f}",
            "equityWithLoanChange": f"{-commission * self.broker.rate(commission_currency, v['base']):.2f}",
            "initMarginAfter": f"{before[0] + init:.2f}",
            "maintMarginAfter": f"{before[1] + maint:.2f}",
            "equityWithLoanAfter": f"{before[2] - commission * self.broker.rate(commission_currency, v['base']):.2f}",
            "commission": commission,
            "currency": commission_currency,
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
            M.open_order_msg(conn.version, inst.view(req.contract.exchange or None), wire, "PreSubmitted", what_if)
        )

    def _cancel_order(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        order_id = r.int()
        order = self.broker.orders.get((conn.client_id or 0, order_id))
        if order is None:
            # As IB answers (ib_insync #690; QuantConnect/Lean.Brokerages.InteractiveBrokers#248)
            conn.send_error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found.")
            return
        if order.status == "PendingCancel":
            # A second cancel while the exchange has the first (IB's message codes: 161)
            conn.send_error(order_id, 161, NOT_CANCELLABLE.format(perm_id=order.permId))
            return
        if not order.active:
            conn.send_error(
                order_id,
                10148,
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {order.status}.",
            )
            return
        log.info("client %s: cancel order %d", conn.client_id, order_id)
        delay = self.scenario.cancelDelayMs / 1000
        if order.status == "Submitted" and not order.whyHeld and delay > 0:
            # At the exchange: PendingCancel until the exchange confirms, and what executes meanwhile stays executed
            # (the order may even fill). An order IB still holds (closed market, locate) is cancelled at once.
            self.broker.request_cancel(order)
            asyncio.get_running_loop().call_later(delay, self._confirm_cancel, order)
            return
        self.broker.cancel(order)
        conn.send_error(order_id, 202, "Order Canceled - reason:")

    def _confirm_cancel(self, order: SimOrder) -> None:
        if order.status != "PendingCancel":
            return  # filled before the exchange took the cancel: IB reports it Filled, and that is all
        self.broker.cancel(order)
        owner = self.clients.get(order.clientId)
        if owner is not None:
            owner.send_error(order.orderId, 202, "Order Canceled - reason:")

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
                conn.send(M.order_status_msg(order.wire()))
        conn.send([53, 1])

    def _req_all_open_orders(self, conn: Connection, r: Reader) -> None:
        for order in self.broker.active_orders():
            self._send_open_order(conn, order)
            conn.send(M.order_status_msg(order.wire()))
        conn.send([53, 1])

    def _req_completed_orders(self, conn: Connection, r: Reader) -> None:
        done = [o for o in self.broker.orders.values() if o.status in COMPLETED and not o.earlierDay]
        done.sort(key=lambda o: o.completedTime)
        for order in done:
            conn.send(M.completed_order_msg(conn.version, self._order_view(order), order.wire()))
        conn.send([102])

    def _req_executions(self, conn: Connection, r: Reader) -> None:  # noqa: C901 (IB's ExecutionFilter: one field after another)
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
        # "The IB Gateway is limited to only executions from the current trading day since midnight" (TWS API,
        # Executions and Commissions), midnight in the login's zone: a clock moved past it without a day roll no
        # longer reports the day before's.
        today = self.clock.now(self.scenario.timeZone).replace(hour=0, minute=0, second=0, microsecond=0)
        sides = {"BUY": "BOT", "SELL": "SLD", "BOT": "BOT", "SLD": "SLD"}
        for e in self.broker.executions:
            inst = self.instruments.get(e["key"])
            if inst is None or e["time"] < today.timestamp():
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
            conn.send(M.exec_details_msg(conn.version, req_id, inst.view(), e))
            if self.held_commissions is None or e["execId"] not in self.held_commissions:
                conn.send(M.commission_report_msg(e))
        conn.send([55, 1, req_id])

    # -- broker listener ---------------------------------------------------------------------------------------
    def order_update(self, order: SimOrder, *, open_order: bool) -> None:
        conn = self.clients.get(order.clientId)
        if conn is None:
            return
        status = M.order_status_msg(order.wire())
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

    def order_warning(self, order: SimOrder, code: int, message: str) -> None:
        log.info("client %s: order %d warning %d: %s", order.clientId, order.orderId, code, message)
        conn = self.clients.get(order.clientId)
        if conn is not None:
            conn.send_error(order.orderId, code, message)

    def _report_execution(self, conn: Connection, inst: Instrument, execution: dict[str, Any]) -> None:
        if conn.stage == "closed":  # a lagging report to a client gone since: it asks reqExecutions on reconnect
            return
        conn.send(M.exec_details_msg(conn.version, -1, inst.view(), execution))
        if self.held_commissions is None:
            conn.send(M.commission_report_msg(execution))

    def execution(self, order: SimOrder, execution: dict[str, Any]) -> None:
        conn = self.clients.get(order.clientId)
        inst = self.instruments[order.key]
        if self.held_commissions is not None:
            self.held_commissions[execution["execId"]] = execution
        if conn is not None and self.execution_lag <= 0:
            self._report_execution(conn, inst, execution)
        if conn is not None:
            conn.send(M.order_status_msg(order.wire()))
            if not order.active:
                self._send_open_order(conn, order)
            if self.execution_lag > 0:  # IB promises no order among an order's messages
                asyncio.get_running_loop().call_later(self.execution_lag, self._report_execution, conn, inst, execution)
        # IB's positions and account window follow the order's own messages, a moment later (a forex pair's
        # position is its virtual FX position)
        self.fill_reported(order.account, inst.key)


NOT_CANCELLABLE = "Cancel attempted when order is not in a cancellable state. Order permId ={perm_id}"


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
