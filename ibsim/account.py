"""Account requests: account updates, the multi-account variant, account summary, positions and PnL.

A change marks accounts dirty and the push sends each subscriber only what changed, as IB does: at once for cash
and positions (a fill's `accountUpdates.afterFillMs` later), at the next tick of IB's fixed three-minute interval
(`accountUpdates.intervalMs`, on the gateway's clock) for a price move's marks and values, and for anything the
account-summary subscriptions hear; reqPnL follows prices at once. Also the controls that change an account behind
the client's back (set_position, set_cash).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from .connection import Connection
from .controls import fault
from .core import GatewayCore
from .ledger import Position
from .market import Instrument
from .protocol import Reader

# IB keeps at most two account-summary subscriptions active per client; a third is refused until one is cancelled.
MAX_ACCOUNT_SUMMARIES = 2
ACCOUNT_SUMMARIES_EXCEEDED = (
    "Maximum number of account summary requests exceeded; desubscribe to previous request first"
)


class AccountDesk(GatewayCore):
    """reqAccountUpdates(Multi), reqAccountSummary, reqPositions, reqPnL, and the pushes that keep them current."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._account_push: asyncio.Handle | None = None
        self._fill_push: asyncio.TimerHandle | None = None
        self._interval_push: asyncio.TimerHandle | None = None
        self._interval_due = 0.0  # the gateway clock's time of the interval's next tick, while one is scheduled
        self._dirty_accounts: set[str] = set()
        self._repriced_accounts: set[str] = set()
        self._summaries_changed = False  # an account changed since the summary subscriptions last heard
        self._moved_positions: set[tuple[str, str]] = set()

    def _req_account_updates(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        subscribe = r.bool()
        account = r.str() or self.broker.default_account
        if not subscribe:
            conn.account_sub = None
            return
        if account not in self.broker.accounts:
            conn.send_error(-1, 321, f"Error validating request.-'bk' : cause - Invalid account code '{account}'.")
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
        for inst, pos, price, value, unrealized in self._reported_portfolio(account):
            row = (pos.quantity, price, round(value, 2), pos.avgCost, round(unrealized, 2), round(pos.realized, 2))
            if full or conn.portfolio_cache.get(inst.key) != row:
                conn.portfolio_cache[inst.key] = row
                conn.send([7, 8, *inst.view().portfolio11(), *row, account])
                changed = True
        for key in list(conn.portfolio_cache):
            if key not in self._reported_positions(account):
                inst = self.instruments[key]
                del conn.portfolio_cache[key]
                conn.send([7, 8, *inst.view().portfolio11(), 0.0, inst.price, 0.0, 0.0, 0.0, 0.0, account])
        if changed or full:
            conn.send([8, 1, self.clock.now("America/New_York").strftime("%H:%M")])

    def _reported_positions(self, account: str) -> dict[str, Position]:
        """The positions IB sends: the account's, and its virtual FX positions unless the gateway's "Include FX
        positions when sending portfolio" (on by default) is off."""
        acct = self.broker.accounts[account]
        return {**acct.positions, **acct.fx} if self.scenario.includeFxPositions else acct.positions

    def _reported_portfolio(self, account: str) -> list[tuple[Instrument, Position, float, float, float]]:
        rows = self.broker.portfolio(account)
        return rows + self.broker.fx_portfolio(account) if self.scenario.includeFxPositions else rows

    def _req_account_updates_multi(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        account = r.str() or self.broker.default_account
        r.skip(2)
        if account not in self.broker.accounts:
            conn.send_error(req_id, 321, f"Error validating request.-'cq' : cause - Invalid account code '{account}'.")
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
        if len(conn.summary_subs) >= MAX_ACCOUNT_SUMMARIES:
            conn.send_error(req_id, 322, ACCOUNT_SUMMARIES_EXCEEDED)
            return
        conn.summary_subs[req_id] = tags
        conn.summary_cache[req_id] = {}
        self._push_summary(conn, req_id)
        conn.send([64, 1, req_id])

    def _push_summary(self, conn: Connection, req_id: int) -> None:
        """The subscription's values that changed since it last heard: all of them the first time."""
        cache = conn.summary_cache.setdefault(req_id, {})
        for account in self.broker.accounts:
            for tag, value, cur in self.broker.summary(account, conn.summary_subs[req_id]):
                if cache.get((account, tag, cur)) != value:
                    cache[(account, tag, cur)] = value
                    conn.send([63, 1, req_id, account, tag, value, cur])

    def _cancel_account_summary(self, conn: Connection, r: Reader) -> None:
        r.skip(1)
        req_id = r.int()
        conn.summary_subs.pop(req_id, None)
        conn.summary_cache.pop(req_id, None)

    def _position_msg(self, account: str, inst: Instrument, quantity: float, avg_cost: float) -> list[Any]:
        return [61, 3, account, *inst.view(inst.listing).c11(), quantity, avg_cost]

    def _req_positions(self, conn: Connection, r: Reader) -> None:
        conn.positions_sub = True
        for acct in self.broker.accounts.values():
            for key, pos in self._reported_positions(acct.id).items():
                if pos.quantity:
                    conn.send(self._position_msg(acct.id, self.instruments[key], pos.quantity, pos.avgCost))
        conn.send([62, 1])

    def _cancel_positions(self, conn: Connection, r: Reader) -> None:
        conn.positions_sub = False

    def _req_pnl(self, conn: Connection, r: Reader) -> None:
        req_id = r.int()
        account = r.str() or self.broker.default_account
        if account not in self.broker.accounts:
            conn.send_error(req_id, 321, f"Error validating request.-'ci' : cause - Invalid account code '{account}'.")
            return
        conn.pnl_subs[req_id] = account
        self._push_pnl(conn, req_id, account)

    def _push_pnl(self, conn: Connection, req_id: int, account: str) -> None:
        v = self.broker.valuation(account)
        conn.send([94, req_id, v["UnrealizedPnL"] + v["RealizedPnL"], v["UnrealizedPnL"], v["RealizedPnL"]])

    def _cancel_pnl(self, conn: Connection, r: Reader) -> None:
        conn.pnl_subs.pop(r.int(), None)

    def position_changed(self, account: str, key: str) -> None:
        inst = self.instruments[key]
        pos = self._reported_positions(account).get(key)
        if pos is None and inst.secType == "CASH" and not self.scenario.includeFxPositions:
            return
        qty, avg = (pos.quantity, pos.avgCost) if pos else (0.0, 0.0)
        msg = self._position_msg(account, inst, qty, avg)
        for conn in list(self.clients.values()):
            if conn.positions_sub:
                conn.send(msg)

    def account_changed(self, account: str) -> None:
        self._dirty_accounts.add(account)
        if self._account_push is None:
            self._account_push = asyncio.get_running_loop().call_soon(self.push_accounts)
        self._summaries_due()

    def _summaries_due(self) -> None:
        """reqAccountSummary subscriptions hear what changed at the interval's next tick only, fills included (IB:
        "every three minutes those values which have changed will be returned")."""
        if not any(conn.summary_subs for conn in self.clients.values()):
            return
        if self.scenario.accountIntervalMs <= 0:
            for conn in list(self.clients.values()):
                for req_id in list(conn.summary_subs):
                    self._push_summary(conn, req_id)
            return
        self._summaries_changed = True
        self._tick_ahead()

    def _tick_ahead(self) -> None:
        if self._interval_push is None:
            self._schedule_interval_push()

    def account_repriced(self, account: str) -> None:
        """A price moved under the account: PnL subscribers hear at once, the account window at the next tick of the
        fixed interval (an earlier push for a position change sends the account as it stands, marks included)."""
        for conn in list(self.clients.values()):
            for req_id, subscribed in list(conn.pnl_subs.items()):
                if subscribed == account:
                    self._push_pnl(conn, req_id, account)
        if self.scenario.accountIntervalMs <= 0:
            self.account_changed(account)
            return
        self._repriced_accounts.add(account)
        self._tick_ahead()
        self._summaries_due()

    def _schedule_interval_push(self, due: float | None = None) -> None:
        """At the next multiple of the interval on the gateway's clock (from the epoch), or at `due` when the clock
        moved: a test on a fixed clock knows when its marks arrive, and `advance_time` past the tick brings them."""
        interval = self.scenario.accountIntervalMs / 1000
        now = self.clock.time()
        if due is None:
            due = math.floor(now / interval + 1) * interval
        delay = min(interval, max(0.0, due - now))  # a clock set back never puts the tick further than one interval
        self._interval_due = now + delay
        if self._interval_push is not None:
            self._interval_push.cancel()
        self._interval_push = asyncio.get_running_loop().call_later(delay, self._interval_tick)

    def _interval_tick(self) -> None:
        """The interval's tick: the price moves since the last one, and what the summary subscriptions hear."""
        self._interval_push = None
        repriced, self._repriced_accounts = self._repriced_accounts, set()
        self._dirty_accounts |= repriced
        self.push_accounts()
        if self._summaries_changed:
            self._summaries_changed = False
            for conn in list(self.clients.values()):
                for req_id in list(conn.summary_subs):
                    self._push_summary(conn, req_id)

    def clock_moved(self) -> None:
        """The gateway's clock was set or advanced: the interval's next tick moves with it."""
        if self._interval_push is not None:
            self._schedule_interval_push(self._interval_due)

    def fill_reported(self, account: str, key: str) -> None:
        """An execution's position, portfolio and account values go out `accountUpdates.afterFillMs` after the
        order's own messages: IB's positions and account window lag its fills (ib_async #15), and a client must
        not take a filled order for a current position. (A push sooner, for another position change, sends the
        account as it stands, as IB's account window would.)"""
        self._moved_positions.add((account, key))
        if self._fill_push is None:
            self._fill_push = asyncio.get_running_loop().call_later(
                self.scenario.accountAfterFillMs / 1000, self._push_fills
            )

    def _push_fills(self) -> None:
        self._fill_push = None
        moved, self._moved_positions = self._moved_positions, set()
        for account, key in sorted(moved):
            self.position_changed(account, key)
            self._dirty_accounts.add(account)
        self.push_accounts()
        self._summaries_due()

    def push_accounts(self) -> None:
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

    # -- controls -----------------------------------------------------------------------------------------------
    @fault()
    def set_position(
        self, symbol: str, quantity: float, avg_cost: float | None = None, account: str | None = None
    ) -> None:
        inst = self._instrument(symbol)
        if inst.secType == "CASH":
            raise ValueError(f"{symbol} is forex: IB books it as cash, use set_cash")
        acct = self.broker.accounts[account or self.broker.default_account]
        pos = acct.positions.get(inst.key)
        if pos is None:
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

    @fault()
    def set_cash(self, currency: str, amount: float, account: str | None = None) -> None:
        acct = self.broker.accounts[account or self.broker.default_account]
        acct.cash[currency] = float(amount)
        self.account_changed(acct.id)
        self.state_changed()
