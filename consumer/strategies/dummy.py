"""dummy: holds exactly the weights it is given. For plumbing, tests and manual rebalancing."""

from __future__ import annotations

from typing import Any, ClassVar

from consumer.strategies.base import InstrumentSpec, MarketData, Strategy

_INSTRUMENT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "secType": {"enum": ["STK", "CASH", "FUT"]},
        "exchange": {"type": "string", "minLength": 1},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "primaryExchange": {"type": "string"},
        "lastTradeDateOrContractMonth": {"type": "string", "pattern": "^[0-9]{6}([0-9]{2})?$"},
    },
}


class Dummy(Strategy):
    """Holds exactly the weights given in its params ({SYMBOL: weight}); its `instruments` param says how to find a
    symbol that is not a US stock on SMART. For plumbing, tests and rebalancing by hand.
    """

    id = "dummy"
    description = "Targets given verbatim as weights: {SYMBOL: weight}."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["weights"],
        "properties": {
            "weights": {
                "description": "Signed fraction of the strategy's capital per symbol.",
                "type": "object",
                "propertyNames": {"pattern": "^[A-Z0-9][A-Z0-9.]{0,20}$"},
                "maxProperties": 1000,
                "additionalProperties": {"type": "number", "minimum": -10, "maximum": 10},
            },
            "instruments": {
                "description": "How to find a symbol that is not a US stock on SMART, e.g. SAP on IBIS in EUR.",
                "type": "object",
                "additionalProperties": _INSTRUMENT,
            },
        },
    }

    def instruments(self) -> dict[str, InstrumentSpec]:
        specs = self.params.get("instruments", {})
        return {symbol: InstrumentSpec.parse(symbol, specs.get(symbol)) for symbol in self.params["weights"]}

    async def target_weights(self, market: MarketData) -> dict[str, float]:
        return {symbol: float(w) for symbol, w in self.params["weights"].items()}
