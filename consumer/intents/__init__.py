"""The intents this consumer understands, by name.

`DECLARED` names every intent and where its `Intent` is declared, so a command line that only needs the names (the
CLI's `publish` validates a message against `intents/{name}.schema.json`) does not import the handlers, and with
them ib_insync and the Firestore client: 0.4 s of every `consumer publish`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumer.intents.base import Intent

# name -> "module:attribute" of its Intent, in consumer/intents/
DECLARED: dict[str, str] = {
    "summary": "summary:INTENT",
    "ping": "ping:INTENT",
    "health": "ping:HEALTH",
    "allocation": "allocation:INTENT",
    "close-all": "close_all:INTENT",
    "cash-balancer": "cash_balancer:INTENT",
    "trade-reconciliation": "reconcile:TRADE_RECONCILIATION",
    "reconcile": "reconcile:RECONCILE",
    "collect-market-data": "market_data:INTENT",
    "pnl": "pnl:INTENT",
    "eod-check": "eod_check:INTENT",
    "risk-check": "risk_check:INTENT",
}


def params_schema(name: str) -> str:
    """The schema of an intent's params, by the intent's name."""
    return f"intents/{name}.schema.json"


def builtin_intents() -> dict[str, Intent]:
    from consumer.intents.base import Intent

    intents = {}
    for name, where in DECLARED.items():
        module, attribute = where.split(":")
        intent = getattr(import_module(f"consumer.intents.{module}"), attribute)
        if not isinstance(intent, Intent) or intent.name != name:
            raise RuntimeError(f"consumer.intents.{where} is not the Intent {name!r}")
        intents[name] = intent
    return intents
