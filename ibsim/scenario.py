"""Scenarios: accounts, instruments, fill and fault settings from JSON or YAML, with errors that name the field."""

from __future__ import annotations

import copy
import datetime as dt
import json
import zlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import parse_instant
from .instrument_spec import (
    InstrumentSpec,
    ScenarioError,
    currency_code,
    instrument_spec,
)
from .protocol import REQUEST_NAMES

if TYPE_CHECKING:
    from .controls import Action


@dataclass
class PositionSpec:
    """A position an account starts with; `avgCost` None: the instrument's starting price times its multiplier."""

    symbol: str
    quantity: float
    avgCost: float | None


@dataclass
class AccountSpec:
    """An account a scenario starts with: id, base currency, cash by currency and positions."""

    id: str
    baseCurrency: str
    cash: dict[str, float]
    positions: list[PositionSpec]


@dataclass
class FaultSpec:
    """A fault a scenario schedules: the action (see ibsim.controls) at `at` seconds after start, with its arguments."""

    at: float
    action: str
    args: dict[str, Any]


@dataclass
class Precautions:
    """IB Gateway's order precautions for API orders (Configure > Settings > API > Precautions, and the presets'
    Size Limit and Total Value Limit). `bypass`: "Bypass Order Precautions for API Orders", which gateway-image sets
    through IBC (BypassOrderPrecautions=yes); off, as on a fresh gateway, an order beyond a limit is refused.
    None: no limit."""

    bypass: bool = True
    sizeLimit: float | None = 500
    totalValueLimit: float | None = 100_000


@dataclass
class Scenario:
    """What a simulated gateway starts from: accounts, instruments, market hours, fill and latency behaviour and the
    faults to inject. `default()` is the packaged scenarios/default.yaml; `load(path)` reads and validates a file
    against scenario.schema.json (ScenarioError names the field); `instrument(key)` finds one by key.
    """

    name: str
    seed: int
    hours: str
    accounts: list[AccountSpec]
    instruments: list[InstrumentSpec]
    maxFillSize: float
    # A larger order fills in bigger executions, so that no order takes more than this many.
    maxExecutionsPerOrder: int
    fillDelayMs: float
    commission: dict[str, float]
    latency: dict[str, float]
    pacing: dict[str, float]
    connectCost: dict[str, float]
    tickIntervalMs: float
    faults: list[FaultSpec]
    # Where the simulated clock starts (None: the wall clock). Hours, history and executions all follow it.
    clockStart: dt.datetime | None = None
    # False: the login has no live market data subscription (IB answers 354, or delayed data with 10167).
    liveSubscription: bool = True
    # The login's market-data permission for instruments that name none: realtime | delayed | none.
    # marketData.liveSubscription is its older spelling: true = realtime, false = delayed.
    permissions: str = "realtime"
    # Streaming market-data lines of the login, across all its clients (IB's default allowance: 100).
    marketDataLines: int = 100
    # The time zone chosen at the login (IBC's TimeZone; gateway-image's default): IB reads a date and time sent
    # without a zone, such as an order's goodAfterTime, in it.
    timeZone: str = "America/New_York"
    # Seconds from a snapshot request to its tickSnapshotEnd. IB sends the available ticks at once and ends the
    # snapshot 11 s later ("Streaming Data Snapshots"); a client that waits for the end waits those 11 s.
    snapshotEndSeconds: float = 11.0
    # True: an order whose initial margin would exceed the equity with loan value is rejected (201), as IB does.
    marginEnforce: bool = True
    precautions: Precautions = field(default_factory=Precautions)
    # IB Gateway's "Read-Only API" setting (IBC ReadOnlyApi): orders, cancels and order lists are refused with 321.
    # Off, as gateway-image configures a paper gateway; a live one is read-only unless IB_READ_ONLY_API=no.
    readOnlyApi: bool = False
    # IB Gateway's "Include FX positions when sending portfolio" (on by default): a forex pair's virtual position,
    # the sum of its trades, is sent with the positions and the portfolio.
    includeFxPositions: bool = True
    # accountUpdates.afterFillMs: an execution's positions, portfolio and account values follow its order status
    # this much later (IB's lag after a fill).
    accountAfterFillMs: float = 200.0
    # accountUpdates.intervalMs: a price move's portfolio marks and account values go out at the next tick of this
    # fixed interval on the gateway's clock (IB's account window: "a fixed interval of three minutes" unless a
    # position changes). 0 sends them at once.
    accountIntervalMs: float = 180_000.0
    # A cancel of an order at the exchange: PendingCancel, and Cancelled this much later; it may fill meanwhile.
    cancelDelayMs: float = 10.0
    # A historical request's bars are sent this long after it arrives (IB's HMDS takes a fraction of a second to
    # seconds); while a client has 50 unanswered, the next is refused with 322.
    historyDelayMs: float = 0.0
    # Largest IDEALPRO execution (fault set_max_fill_size(n, forex=True)); 0: a forex order fills in one execution.
    maxForexFillSize: float = 0.0
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> Scenario:
        return cls.from_dict({})

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ScenarioError(f"{p}: cannot read: {e.strerror or e}") from e
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ScenarioError(f"{p}: not valid JSON: {e}") from e
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ScenarioError(f"{p}: not valid YAML: {e}") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ScenarioError("(top level): a scenario is a mapping of fields")
        scenario = cls.from_dict(data)
        if "name" not in data:
            scenario.name = p.stem
        return scenario

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        if not isinstance(data, dict):
            raise ScenarioError("(top level): a scenario is a mapping of fields")
        if data:  # the built-in defaults are checked by the tests; skipping saves importing jsonschema
            _validate_schema(data)
        merged = {**copy.deepcopy(_default_data()), **copy.deepcopy(data)}
        if data and "name" not in data:
            merged["name"] = "custom"
        for key in (
            "commission",
            "latency",
            "pacing",
            "connectCost",
            "marketData",
            "margin",
            "precautions",
            "accountUpdates",
            "generated",
        ):
            if key in data:
                merged[key] = {**_default_data().get(key, {}), **data[key]} if key != "generated" else data[key]
        return _build(merged, given=data)

    def instrument(self, key: str) -> InstrumentSpec:
        for inst in self.instruments:
            if inst.key == key:
                return inst
        raise KeyError(key)


@cache
def _default_data() -> dict[str, Any]:
    import yaml

    text = resources.files("ibsim").joinpath("scenarios/default.yaml").read_text()
    return yaml.safe_load(text)


def _scheduled_faults() -> dict[str, Action]:
    """The faults a scenario may schedule, as ibsim/faults.py declares them (imported here: it builds on this)."""
    from .faults import SCHEDULED

    return SCHEDULED


@cache
def _schema() -> dict[str, Any]:
    schema = json.loads(resources.files("ibsim").joinpath("scenario.schema.json").read_text())
    schema["properties"]["faults"]["items"]["properties"]["action"]["enum"] = sorted(_scheduled_faults())
    return schema


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _validate_schema(data: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ScenarioError(f"{_path(err.absolute_path)}: {err.message}")


def _clock_start(d: dict[str, Any]) -> dt.datetime | None:
    text = (d.get("clock") or {}).get("start")
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError as e:
        raise ScenarioError(f"clock.start: {e}") from None


def _build(d: dict[str, Any], given: dict[str, Any]) -> Scenario:
    clock_start = _clock_start(d)
    today = clock_start.date() if clock_start else dt.date.today()
    instruments = _instruments(d, today)
    by_key = {inst.key: inst for inst in instruments}
    accounts: list[AccountSpec] = []
    for i, raw in enumerate(d.get("accounts") or []):
        if raw["id"] in {a.id for a in accounts}:
            raise ScenarioError(f"accounts[{i}].id: {raw['id']!r} is defined twice")
        accounts.append(_account(raw, f"accounts[{i}]", by_key))
    scheduled = _scheduled_faults()
    faults = [_fault(raw, f"faults[{i}]", scheduled, by_key) for i, raw in enumerate(d.get("faults") or [])]
    return Scenario(
        name=str(d.get("name", "default")),
        seed=int(d.get("seed", 42)),
        hours=d.get("hours", "regular"),
        timeZone=str(d.get("timeZone", "America/New_York")),
        accounts=accounts,
        instruments=instruments,
        maxFillSize=float(d.get("maxFillSize", 500)),
        maxExecutionsPerOrder=int(d.get("maxExecutionsPerOrder", 100)),
        fillDelayMs=float(d.get("fillDelayMs", 5)),
        commission={k: float(v) for k, v in (d.get("commission") or {}).items()},
        latency={k: float(v) for k, v in (d.get("latency") or {}).items()},
        pacing={k: float(v) for k, v in (d.get("pacing") or {}).items()},
        connectCost={k: float(v) for k, v in (d.get("connectCost") or {}).items()},
        tickIntervalMs=float((d.get("marketData") or {}).get("tickIntervalMs", 500)),
        faults=faults,
        clockStart=clock_start,
        liveSubscription=bool((d.get("marketData") or {}).get("liveSubscription", True)),
        permissions=_permissions(d.get("marketData") or {}),
        marketDataLines=int((d.get("marketData") or {}).get("lines", 100)),
        snapshotEndSeconds=float((d.get("marketData") or {}).get("snapshotEndSeconds", 11.0)),
        marginEnforce=bool((d.get("margin") or {}).get("enforce", True)),
        precautions=_precautions(d.get("precautions") or {}),
        readOnlyApi=bool(d.get("readOnlyApi", False)),
        includeFxPositions=bool(d.get("includeFxPositions", True)),
        accountAfterFillMs=float((d.get("accountUpdates") or {}).get("afterFillMs", 200)),
        accountIntervalMs=float((d.get("accountUpdates") or {}).get("intervalMs", 180_000)),
        cancelDelayMs=float(d.get("cancelDelayMs", 10)),
        historyDelayMs=float(d.get("historyDelayMs", 0)),
        raw=copy.deepcopy(given),
    )


def _precautions(d: dict[str, Any]) -> Precautions:
    def limit(key: str, default: float) -> float | None:
        value = d.get(key, default)
        return None if value is None else float(value)

    return Precautions(
        bypass=bool(d.get("bypass", True)),
        sizeLimit=limit("sizeLimit", 500),
        totalValueLimit=limit("totalValueLimit", 100_000),
    )


def _instruments(d: dict[str, Any], today: dt.date) -> list[InstrumentSpec]:
    """The scenario's instruments, then the generated ones; a key or conId used twice is refused."""
    instruments: list[InstrumentSpec] = []
    seen: dict[str, str] = {}
    con_ids: dict[int, str] = {}
    entries = [(f"instruments[{i}]", raw) for i, raw in enumerate(d.get("instruments") or [])]
    entries += [(f"generated ({raw['symbol']})", raw) for raw in _generated(d.get("generated") or {})]
    for where, raw in entries:
        inst = instrument_spec(raw, where, today)
        if inst.key in seen:
            raise ScenarioError(f"{where}.symbol: {inst.key!r} is defined twice (also at {seen[inst.key]})")
        if inst.conId in con_ids:
            raise ScenarioError(f"{where}.conId: {inst.conId} is already used by {con_ids[inst.conId]}")
        seen[inst.key] = where
        con_ids[inst.conId] = inst.key
        instruments.append(inst)
    return instruments


def _generated(gen: dict[str, Any]) -> list[dict[str, Any]]:
    """`generated.count` stocks as scenario entries: deterministic prices spread over the range, on a cent grid."""
    count = int(gen.get("count", 0))
    if not count:
        return []
    prefix = gen.get("prefix", "SYM")
    currency = currency_code(gen.get("currency", "USD"), "generated.currency")
    lo, hi = float(gen.get("priceMin", 10.0)), float(gen.get("priceMax", 400.0))
    if hi < lo:
        raise ScenarioError(f"generated.priceMax: {hi} is below priceMin {lo}")
    width = max(3, len(str(count - 1)))
    entries = []
    for n in range(count):
        key = f"{prefix}{n:0{width}d}"
        frac = (zlib.crc32(key.encode()) % 10_000) / 10_000
        entries.append(
            {
                "symbol": key,
                "secType": "STK",
                "exchange": "SMART",
                "primaryExchange": gen.get("primaryExchange", "NYSE"),
                "currency": currency,
                "price": max(round(lo + (hi - lo) * frac, 2), 0.01),
                "longName": f"SIMULATED STOCK {n}",
            }
        )
    return entries


def _account(raw: dict[str, Any], where: str, by_key: dict[str, InstrumentSpec]) -> AccountSpec:
    base = currency_code(raw.get("baseCurrency", "USD"), f"{where}.baseCurrency")
    cash = {currency_code(cur, f"{where}.cash.{cur}"): float(amount) for cur, amount in (raw.get("cash") or {}).items()}
    positions = []
    for j, p in enumerate(raw.get("positions") or []):
        inst = by_key.get(p["symbol"])
        if inst is None:
            raise ScenarioError(f"{where}.positions[{j}].symbol: {p['symbol']!r} is not an instrument of the scenario")
        if inst.secType == "CASH":
            raise ScenarioError(
                f"{where}.positions[{j}].symbol: {p['symbol']!r} is forex; IB books it as cash, use {where}.cash"
            )
        positions.append(PositionSpec(p["symbol"], float(p["quantity"]), p.get("avgCost")))
    return AccountSpec(raw["id"], base, cash, positions)


def _fault(
    raw: dict[str, Any], where: str, scheduled: dict[str, Action], by_key: dict[str, InstrumentSpec]
) -> FaultSpec:
    """A scheduled fault, its arguments checked against the action's (from its annotations in faults.py)."""
    action = scheduled[raw["action"]]  # the schema already refused an unknown action
    args = raw.get("args") or {}
    params = {p.name: p for p in action.params}
    for name, value in args.items():
        if name not in params:
            raise ScenarioError(f"{where}.args.{name}: not an argument of {action.name}")
        accepts = params[name].accepts
        if (isinstance(value, bool) and bool not in accepts) or not isinstance(value, accepts):
            raise ScenarioError(f"{where}.args.{name}: {value!r} has the wrong type")
    for param in action.params:
        if param.required and param.name not in args:
            raise ScenarioError(f"{where}.args.{param.name}: {action.name} needs it")
    if action.name == "set_price" and args["symbol"] not in by_key:
        raise ScenarioError(f"{where}.args.symbol: {args['symbol']!r} is not an instrument of the scenario")
    known = {name.lower() for name in REQUEST_NAMES}
    if action.name == "stall_request" and args["request"].lower() not in known:
        raise ScenarioError(f"{where}.args.request: {args['request']!r} is not a TWS request ibsim knows")
    return FaultSpec(float(raw["at"]), action.name, dict(args))


def _permissions(market_data: dict[str, Any]) -> str:
    if "permissions" in market_data:
        return str(market_data["permissions"])
    return "realtime" if market_data.get("liveSubscription", True) else "delayed"
