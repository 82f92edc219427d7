"""The trading configuration document (config/{mode}): kill switch, live guard, exposure, order defaults.

The consumer's own identity can write this document, so it cannot be what allows live trading or sets the largest
leverage: those ceilings come from the deployment (`DeploymentLimits`, from ALLOW_LIVE and LEVERAGE_CAP_MAX), and
the document can only tighten them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import IntentError
from consumer.schemas import Schemas, SchemaViolation
from consumer.store.layout import Layout

SCHEMA = "trading-config.schema.json"


@dataclass(frozen=True, slots=True)
class OrderDefaults:
    """config orderDefaults: how every order is built (type, algo, tif, LMT offset) and how long it is awaited."""

    order_type: str = "MKT"
    algo: str = "Adaptive"
    adaptive_priority: str = "Normal"
    tif: str = "DAY"
    limit_offset_bps: float = 5.0
    timeout_seconds: float | None = None
    min_trade_value: float = 0.0  # rebalance band: smaller orders are skipped (allocation only)
    sizing_prices: str = "marks"  # what allocation sizes a held instrument at: IB's "marks", or "snapshots"


@dataclass(frozen=True, slots=True)
class DeploymentLimits:
    """The ceilings set outside Firestore; the defaults are the safe ones (no live trading, at most 1x)."""

    allow_live: bool = False
    leverage_cap: float = 1.0


@dataclass(frozen=True, slots=True)
class TradingConfig:
    """config/{mode} as the dispatcher and the intents read it, read fresh for every message; the deployment's
    ceilings already applied (`allow_live`, `leverage_cap`)."""

    exists: bool = False
    trading_enabled: bool = False
    allow_live: bool = False  # the document's allowLive: necessary, never sufficient (see DeploymentLimits)
    leverage_cap: float = 1.0  # the lower of the document's leverageCap and the deployment's cap
    overall_exposure: float = 0.0
    strategy_exposure: dict[str, float] = field(default_factory=dict)
    default_strategies: tuple[str, ...] | None = None  # None: every strategy with a share
    order_defaults: OrderDefaults = field(default_factory=OrderDefaults)
    market_data_type: int = 1
    cash_threshold: float = 0.0
    flat_at_close: frozenset[str] = frozenset()  # strategies eod-check expects flat after the close
    close_at_close: frozenset[str] = frozenset()  # of those, the ones the eod-close-all job closes (flatAtClose: close)
    drift_bands: dict[str, float] = field(default_factory=dict)  # per strategy: config strategies.{id}.driftBand
    risk: dict[str, dict[str, Any]] = field(default_factory=dict)  # config risk, as validated: risk-check reads it
    drawdowns: dict[str, dict[str, Any]] = field(default_factory=dict)  # per strategy: strategies.{id}.drawdown
    halted_reason: str | None = None  # set by risk-check's halt action, with tradingEnabled false
    halted_by: str | None = None  # the request id of that risk-check

    @classmethod
    def from_document(
        cls, data: dict[str, Any] | None, schemas: Schemas, path: str, limits: DeploymentLimits
    ) -> TradingConfig:
        if data is None:
            return cls(leverage_cap=limits.leverage_cap)
        try:
            schemas.validate(SCHEMA, data)
        except SchemaViolation as e:
            raise IntentError("config_invalid", f"{path} is invalid: {e}", details=e.problems) from None
        non_finite = _non_finite(data)
        if non_finite:
            # The schema's bounds are comparisons, which NaN passes: a NaN leverageCap turned every cap check False.
            raise IntentError("config_invalid", f"{path} is invalid: {non_finite} is not a finite number")
        exposure = data.get("exposure", {})
        orders = data.get("orderDefaults", {})
        config = cls(
            exists=True,
            trading_enabled=data.get("tradingEnabled", False),
            allow_live=data.get("allowLive", False),
            leverage_cap=min(data.get("leverageCap", 1.0), limits.leverage_cap),
            overall_exposure=exposure.get("overall", 0.0),
            strategy_exposure=dict(exposure.get("strategies", {})),
            default_strategies=tuple(data["defaultStrategies"]) if "defaultStrategies" in data else None,
            order_defaults=OrderDefaults(
                order_type=orders.get("orderType", "MKT"),
                algo=orders.get("algo", "Adaptive"),
                adaptive_priority=orders.get("adaptivePriority", "Normal"),
                tif=orders.get("tif", "DAY"),
                limit_offset_bps=orders.get("limitOffsetBps", 5.0),
                timeout_seconds=orders.get("timeoutSeconds"),
                min_trade_value=orders.get("minTradeValue", 0.0),
                sizing_prices=orders.get("sizingPrices", "marks"),
            ),
            market_data_type=data.get("marketDataType", 1),
            cash_threshold=data.get("cashBalancer", {}).get("threshold", 0.0),
            flat_at_close=frozenset(s for s, v in data.get("strategies", {}).items() if v.get("flatAtClose")),
            close_at_close=frozenset(
                s for s, v in data.get("strategies", {}).items() if v.get("flatAtClose") == "close"
            ),
            drift_bands={s: float(c["driftBand"]) for s, c in data.get("strategies", {}).items() if c.get("driftBand")},
            risk=dict(data.get("risk", {})),
            drawdowns={s: dict(c["drawdown"]) for s, c in data.get("strategies", {}).items() if "drawdown" in c},
            halted_reason=data.get("haltedReason"),
            halted_by=data.get("haltedBy"),
        )
        committed = config.overall_exposure * sum(config.strategy_exposure.values())
        if committed > config.leverage_cap + 1e-9:
            raise IntentError(
                "leverage_exceeded",
                f"{path}: exposure.overall x the sum of exposure.strategies is {committed:.4g}, "
                f"above the leverage cap {config.leverage_cap:.4g} (the lower of leverageCap and the deployment's "
                "LEVERAGE_CAP_MAX); fix the config before trading",
            )
        return config

    def capital_share(self, strategy: str) -> float:
        """The fraction of net liquidation a strategy may use."""
        return self.overall_exposure * self.strategy_exposure.get(strategy, 0.0)

    @property
    def enabled_strategies(self) -> list[str]:
        """What an allocation naming no strategy runs: the default ones that have capital.

        A strategy with capital can still be outside the defaults: dummy trades only the weights a message gives.
        """
        funded = (s for s, share in self.strategy_exposure.items() if share > 0)
        if self.default_strategies is None:
            return sorted(funded)
        return sorted(set(funded) & set(self.default_strategies))


class ConfigStore:
    """Reads config/{mode} of the account (`load`) into a TradingConfig, validated against its schema and tightened by
    the deployment's limits; read fresh for every trading message, so an operator's change applies to the next one.
    """

    def __init__(self, layout: Layout, schemas: Schemas, limits: DeploymentLimits) -> None:
        self._layout = layout
        self._schemas = schemas
        self._limits = limits

    async def load(self) -> TradingConfig:
        ref = self._layout.config()
        snapshot = await ref.get()
        data = snapshot.to_dict() if snapshot.exists else None
        return TradingConfig.from_document(data, self._schemas, ref.path, self._limits)


def edited(document: dict[str, Any] | None, key: str, value: Any, unset: bool = False) -> dict[str, Any]:
    """A copy of the config document with one dotted key set (or removed); `consumer config set/unset`."""
    import copy

    result = copy.deepcopy(document or {})
    *parents, leaf = key.split(".")
    if not leaf or any(not part for part in parents):
        raise ValueError(f"{key!r}: expected a dotted key such as exposure.strategies.dummy")
    target = result
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{key!r}: {part} is not an object")
        target = child
    if unset:
        target.pop(leaf, None)
    else:
        target[leaf] = value
    return result


def _non_finite(value: Any, where: str = "") -> str | None:
    """The path of the first NaN or infinity in a config document ('exposure.overall'), if any."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        children = [(f"{where}.{key}" if where else str(key), item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{where}[{n}]", item) for n, item in enumerate(value)]
    else:
        return None
    return next(filter(None, (_non_finite(item, path) for path, item in children)), None)


def check_document(document: dict[str, Any], schemas: Schemas, path: str, limits: DeploymentLimits) -> TradingConfig:
    """What the consumer would make of a document: the schema and the leverage cap, with the consumer's messages."""
    try:
        return TradingConfig.from_document(document, schemas, path, limits)
    except IntentError as e:
        raise ValueError(e.message) from None
