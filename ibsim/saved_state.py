"""The simulated broker's state across restarts (`--state FILE`): what `dump` writes, `restore` reads back."""

from __future__ import annotations

import dataclasses
from typing import Any

from .broker import Broker
from .ledger import Account, Position
from .simorder import SimOrder


def dump(broker: Broker) -> dict[str, Any]:
    """The broker's state as JSON values: accounts, orders, the day's executions, id counters and prices."""
    return {
        "accounts": {
            a.id: {
                "base": a.base,
                "cash": a.cash,
                "positions": {k: dataclasses.asdict(p) for k, p in a.positions.items()},
                "realized": a.realized,
                "fx": {k: dataclasses.asdict(p) for k, p in a.fx.items()},
            }
            for a in broker.accounts.values()
        },
        "orders": [o.wire() for o in broker.orders.values()],
        "executions": broker.executions,
        "nextPerm": broker.next_perm,
        "highestOrderIds": {str(c): i for c, i in broker.highest_order_id.items()},
        "execSeq": broker.exec_seq,
        "prices": {k: i.price for k, i in broker.instruments.items()},
    }


def restore(broker: Broker, state: dict[str, Any]) -> None:
    """Puts a dumped state back (instruments the scenario no longer has are left out)."""
    for acct_id, a in state.get("accounts", {}).items():
        acct = broker.accounts.get(acct_id) or Account(acct_id, a.get("base", "USD"), {})
        acct.cash = {k: float(v) for k, v in a.get("cash", {}).items()}
        acct.positions = {k: Position(**p) for k, p in a.get("positions", {}).items() if k in broker.instruments}
        acct.realized = {k: float(v) for k, v in a.get("realized", {}).items()}
        acct.fx = {k: Position(**p) for k, p in a.get("fx", {}).items() if k in broker.instruments}
        broker.accounts[acct_id] = acct
    for d in state.get("orders", []):
        if d.get("key") not in broker.instruments:
            continue
        d = dict(d)
        d["algoParams"] = [tuple(p) for p in d.get("algoParams", [])]
        d.pop("forOpen", None)  # state files before OPG orders knew their opening (fills.py)
        order = SimOrder(**d)
        if order.status == "PendingCancel":
            order.status = "Cancelled"  # the exchange confirmed it while the gateway was down
        broker.orders[(order.clientId, order.orderId)] = order
        broker.by_perm[order.permId] = order
    broker.executions = list(state.get("executions", []))
    broker.next_perm = max(broker.next_perm, int(state.get("nextPerm", 0)))
    broker.highest_order_id.update({int(c): int(i) for c, i in state.get("highestOrderIds", {}).items()})
    broker.exec_seq = max(broker.exec_seq, int(state.get("execSeq", 0)))
    for key, price in state.get("prices", {}).items():
        if key in broker.instruments:
            broker.instruments[key].set_price(float(price))
