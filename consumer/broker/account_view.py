"""Whether the account values ib_insync holds already count the fills this connection has seen.

IB sends an execution and its order status first, and the account window (cash balances, net liquidation, gross
position value) and the positions a moment later (ib_async #15: "ib.positions() may have a delay"). Cash read
right after a fill is the cash before it: reconcile found a currency difference that was none, risk-check
measured the leverage before the trade that raised it, and the cash-balancer would convert a balance already
spent. So an account is read once the portfolio row of each instrument it last filled has come after the fill,
waited for on ib_insync's `updatePortfolioEvent`: IB sends a position change's row after the account values of
the same update (a forex pair's is its virtual FX position), so the values are in by then too. A login's other
accounts have no rows here (IB sends one account's per client); theirs are the position of each instrument filled
(on the position stream ib_insync keeps for every account) and a value on the multi-account subscription
ib_insync keeps for each, both after the fill: a value alone may be a price move's, sent before the positions.
A fill is known from whichever comes first, its execution or its order's status: IB sends them in no promised
order, and a conversion whose Filled status came first was neither working nor waited for, so its cash was sold
again (decision 35).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ib_insync import IB, AccountValue, Fill, PortfolioItem, Position, Trade


class AccountView:
    """What each account filled since IB last updated it, and a wait until nothing is left.

    `subscribed` names the account whose portfolio ib_insync subscribed at connect: it waits for the filled
    instruments' rows; any other waits for their positions and for its next value."""

    def __init__(self, ib: IB, subscribed: Callable[[], str | None]) -> None:
        self._ib = ib
        self._subscribed = subscribed
        self._rows: dict[str, set[int]] = {}  # conIds filled, by account, whose portfolio row is still to come
        self._positions: dict[str, set[int]] = {}  # the same for positions, on accounts without rows here
        self._values: set[str] = set()
        self._counted: dict[int, float] = {}  # by permId: the quantity filled whose update is waited for already
        self._waiters: list[asyncio.Future[None]] = []
        # The IB object lives for the whole process, across reconnects, so this is hooked once.
        ib.execDetailsEvent += self._on_fill
        ib.orderStatusEvent += self._on_status
        ib.updatePortfolioEvent += self._on_row
        ib.positionEvent += self._on_position
        ib.accountValueEvent += self._on_value

    def current(self, account: str) -> bool:
        return not self._rows.get(account) and not self._positions.get(account) and account not in self._values

    async def settled(self, account: str, within: float) -> bool:
        """True once IB has updated the account after its last fill (at once if none is pending); False if it has
        not after `within` seconds, or the connection holds no values for it (nothing would come)."""
        if not self._ib.accountValues(account):
            return self.current(account)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.current(account):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self.current(account)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return True

    def _on_fill(self, trade: Trade | None, fill: Fill) -> None:
        perm_id = fill.execution.permId
        if not perm_id or self._new(perm_id, fill.execution.cumQty):
            self._filled(fill.execution.acctNumber, fill.contract.conId)

    def _on_status(self, trade: Trade) -> None:
        perm_id = trade.order.permId or trade.orderStatus.permId
        if not trade.order.account or not perm_id:
            return
        if perm_id not in self._counted and not _placed_here(trade):
            # First seen in a list (open orders asked of IB, a reconnect's download): what it filled before is in
            # the account already, and waiting for an update it will not bring held every account read 3 s.
            self._counted[perm_id] = trade.orderStatus.filled
        elif self._new(perm_id, trade.orderStatus.filled):
            self._filled(trade.order.account, trade.contract.conId)

    def _new(self, perm_id: int, filled: float) -> bool:
        """Whether `filled` (an order's cumulative quantity) is more than its status or executions told already."""
        if filled <= self._counted.get(perm_id, 0.0):
            return False
        self._counted[perm_id] = filled
        return True

    def _filled(self, account: str, con_id: int) -> None:
        if account == self._subscribed():
            self._rows.setdefault(account, set()).add(con_id)
        else:
            self._positions.setdefault(account, set()).add(con_id)
            self._values.add(account)

    def _on_row(self, item: PortfolioItem) -> None:
        rows = self._rows.get(item.account)
        if rows is not None and item.contract.conId in rows:
            rows.discard(item.contract.conId)
            self._wake()

    def _on_position(self, position: Position) -> None:
        pending = self._positions.get(position.account)
        if pending is not None and position.contract.conId in pending:
            pending.discard(position.contract.conId)
            self._wake()

    def _on_value(self, value: AccountValue, *_: Any) -> None:
        if value.account in self._values:
            self._values.discard(value.account)
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _placed_here(trade: Trade) -> bool:
    """Placed by this connection (ib_insync logs PendingSubmit when it sends an order), not read from a list."""
    return bool(trade.log) and trade.log[0].status == "PendingSubmit"
