"""The intents this consumer understands, by name."""

from __future__ import annotations

from consumer.intents.base import Intent


def builtin_intents() -> dict[str, Intent]:
    from consumer.intents import (
        allocation,
        cash_balancer,
        close_all,
        eod_check,
        market_data,
        ping,
        pnl,
        reconcile,
        risk_check,
        summary,
    )

    intents = [
        summary.INTENT,
        ping.INTENT,
        ping.HEALTH,
        allocation.INTENT,
        close_all.INTENT,
        cash_balancer.INTENT,
        reconcile.TRADE_RECONCILIATION,
        reconcile.RECONCILE,
        market_data.INTENT,
        pnl.INTENT,
        eod_check.INTENT,
        risk_check.INTENT,
    ]
    return {intent.name: intent for intent in intents}
