"""The intents this consumer understands, by name."""

from __future__ import annotations

from consumer.intents.base import Intent


def builtin_intents() -> dict[str, Intent]:
    from consumer.intents import ping, summary

    intents = [summary.INTENT, ping.INTENT, ping.HEALTH]
    return {intent.name: intent for intent in intents}
