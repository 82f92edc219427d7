"""The one door to the broker: everything the rest of the consumer asks IB, in the product's own types.

Intents, the bookkeeper and recovery use a `Broker` (services.broker, ctx.broker); none of them imports ib_insync
or holds its `IB` object (tests/consumer/test_broker_door.py checks). Behind the door: the connection
(consumer.broker.gateway), requests shared between concurrent callers (shared), instruments (instruments),
market data (market), the order engine (orders) and the translation of IB's objects (views, model).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ib_insync import IB, Contract, Trade

from consumer.broker import market, views
from consumer.broker.account_view import AccountView
from consumer.broker.contract_cache import ContractStore
from consumer.broker.gateway import Gateway, Listener, State
from consumer.broker.instruments import Instrument, Instruments, fx_pair
from consumer.broker.model import Account, BrokerOrder, Fill, HistoricalBar, Position, Prices, Quote, is_done
from consumer.broker.orders import (
    Asked,
    ConnectionRecord,
    OrderEngine,
    Outcome,
    ask_orders,
    cancel_orders,
    find_orders,
)
from consumer.errors import IntentError, UnlistedInstrument
from consumer.logs import get_logger
from consumer.store.trading_config import OrderDefaults
from consumer.strategies.base import InstrumentSpec, MarketData

log = get_logger(__name__)

NO_SECURITY_DEFINITION = 200  # "No security definition has been found for the request"
# How long `account` waits for IB's account values to count the last fill (they follow it by a moment).
ACCOUNT_SETTLE_TIMEOUT = 3.0

# What `Broker.ask_orders` started: a fresh answer still to come, or a first run's connection record.
OrderSnapshot = Asked


class Broker:
    """The broker as the consumer sees it: one account behind one IB Gateway connection.

    Every method runs on the broker loop (where the intents, the bookkeeper and recovery already run) and, but for
    the connection properties, raises `Transient` while the gateway is away, so the message is redelivered once it
    is back. Nothing here sleeps: answers are awaited on ib_insync's events; the one wait on time is IB's
    historical-data pacing window (market.HistoryPacer), a rule of time with no event to wait on.

    Connection
        `ready`, `state`, `connections`, `read_only`, `client_id`, `server_version()`, `managed_accounts()`,
        `add_listener()`; `now()` is the gateway's clock (what decides whether an exchange is open), `current_time()`
        asks for it.

    Account
        `account(configured)`: the account traded, its base currency and net liquidation, once IB's account values
        count the last fill (they follow it: consumer.broker.account_view); `account_summary()`,
        `portfolio()`, `positions()`, `cash_balances(account)`, `fx_rates(account)` (units of base currency per
        unit of each currency the account holds).

    Instruments and market data
        `resolve(specs)` qualifies contracts (an unknown or ambiguous one is an IntentError naming it),
        `by_con_id`, `fx_pair`; `market_data(instruments)` is a strategy's view of the market; `bars`, `prices`,
        `quotes` and `market_fx_rates` (rates for currencies the account holds no cash in, from the pairs' prices).
        History requests keep to IB's pacing rules: an identical one within 15 s is answered from the last.
        Contract details are kept in memory and in the injected `ContractStore` (Firestore), for the trading day.

    Orders and executions
        `order_engine(...)` places a request's legs; `open_orders()` (every client's), `find_orders(refs)` (by
        orderRef: working, completed or seen only in executions), `cancel(orders, within)`, `executions()`
        (today's, asked for) and `session_fills()` (what this connection has seen, no request). `on_fill` and
        `on_order_done` hook the live events for booking.

    Orders are identified by orderRef (consumer.broker.orders.order_ref), which survives crashes and reconnects;
    IB's orderId does not, and only this client id may cancel an order by it.
    """

    def __init__(self, gateway: Gateway, contracts: ContractStore | None = None) -> None:
        self._gateway = gateway
        self._instruments = Instruments(gateway.ib, contracts, now=gateway.now)
        self._history = market.HistoryPacer(gateway.settings.history_timeout)
        self._account_view = AccountView(gateway.ib, self._portfolio_account)
        # The IB object lives for the whole process, across reconnects, so this is hooked once.
        gateway.ib.errorEvent += self._on_error

    def _on_error(self, req_id: int, code: int, message: str, contract: Contract | None) -> None:
        """IB's 200 (no security definition) for a price or order request naming a conId: the cached contract is
        no longer IB's (a conId changed after a corporate action, a delisting), so it is dropped and the next
        resolve asks IB. ib_insync gives the contract of a market-data or contract-details request; an order's is
        its trade's (the order is cancelled with 200 in its log)."""
        if code != NO_SECURITY_DEFINITION:
            return
        ib = self._gateway.ib
        if contract is None:
            trade = ib.wrapper.trades.get((ib.client.clientId, req_id))
            contract = trade.contract if trade is not None else None
        if contract is not None and contract.conId:
            log.warning("IB knows no security for a conId: its cached contract dropped", con_id=contract.conId)
            self._instruments.forget(contract.conId)

    def _portfolio_account(self) -> str | None:
        """The account whose portfolio ib_insync's connect subscribed: IB_ACCOUNT, else the login's only one."""
        configured = self._gateway.settings.account
        accounts = self._gateway.ib.managedAccounts()
        return configured or (accounts[0] if len(accounts) == 1 else None)

    @property
    def _snapshot_timeout(self) -> float:
        return self._gateway.settings.snapshot_timeout

    @property
    def _ib(self) -> IB:
        return self._gateway.require()

    # -- connection --------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._gateway.ready

    @property
    def state(self) -> State:
        return self._gateway.state

    @property
    def connections(self) -> int:
        return self._gateway.connections

    @property
    def read_only(self) -> bool:
        """The gateway's API is read-only (found at connect): orders, cancels and order lists raise GatewayReadOnly."""
        return self._gateway.requests.read_only

    @property
    def client_id(self) -> int:
        return self._ib.client.clientId

    def server_version(self) -> int:
        return self._ib.client.serverVersion()

    def managed_accounts(self) -> list[str]:
        return self._ib.managedAccounts()

    def add_listener(self, listener: Listener) -> None:
        self._gateway.add_listener(listener)

    def now(self) -> datetime:
        return self._gateway.now()

    async def current_time(self) -> datetime:
        self._gateway.require()
        return await self._gateway.requests.current_time()

    # -- account -----------------------------------------------------------------------------------------------------

    async def account(self, configured: str) -> Account:
        """The account traded: `configured` (IB_ACCOUNT), or the login's only one."""
        ib = self._ib
        accounts = ib.managedAccounts()
        if configured:
            if configured not in accounts:
                raise IntentError(
                    "unknown_account", f"IB_ACCOUNT {configured} is not managed by this login ({accounts})"
                )
            account = configured
        elif len(accounts) == 1:
            account = accounts[0]
        else:
            raise IntentError("ambiguous_account", f"this login manages {accounts}; set IB_ACCOUNT to pick one")
        # The account-updates subscription ib_insync starts at connect keeps these current, a moment after each
        # fill (AccountView); the summary is the fallback.
        if not await self._account_view.settled(account, ACCOUNT_SETTLE_TIMEOUT):
            log.warning("account values have not followed the last fill; read as they are", account=account)
        values = ib.accountValues(account) or [
            v for v in await self._gateway.requests.account_summary() if v.account == account
        ]
        for value in values:
            if value.account == account and value.tag == "NetLiquidation" and value.currency not in ("", "BASE"):
                return Account(account, value.currency, float(value.value))
        raise IntentError("no_net_liquidation", f"the gateway reported no NetLiquidation for {account}")

    def account_values(self, account: str, currency: str) -> dict[str, float]:
        """{tag: value} of the account's values in `currency` (its base: NetLiquidation, GrossPositionValue,
        ExcessLiquidity...), as the account-updates subscription ib_insync starts at connect keeps them."""
        values: dict[str, float] = {}
        for v in self._ib.accountValues(account):
            if v.account == account and v.currency == currency:
                parsed = views.number(v.value)
                if parsed is not None:
                    values.setdefault(v.tag, parsed)
        return values

    async def account_summary(self) -> dict[str, dict[str, Any]]:
        """{account: {tag: value or {currency: value}}}. The first call subscribes; ib_insync keeps the values
        current from then on (a fresh request each time would open another subscription, and IB allows two)."""
        return views.account_values(await self._gateway.requests.account_summary())

    def portfolio(self) -> list[dict[str, Any]]:
        """Positions with market values and P&L: the account-updates subscription ib_insync keeps current since
        connect (it has no request/reply form)."""
        return [views.portfolio_item(p) for p in self._ib.portfolio()]

    def portfolio_marks(self, account: str, forex: bool = False) -> dict[int, float]:
        """{conId: IB's mark} of what `account` holds (forex pairs' virtual positions with `forex`), from the account
        window ib_insync keeps: no message asked for it. IB revalues it "at a fixed interval of three minutes" unless
        a position changes, the same window net liquidation comes from. Empty for an account this connection does
        not subscribe to; an unset or non-positive mark is left out (the caller asks the market)."""
        marks = {}
        for p in self._ib.portfolio():
            mark = views.number(p.marketPrice)
            if p.account == account and p.position and (forex or p.contract.secType != "CASH") and mark and mark > 0:
                marks[p.contract.conId] = mark
        return marks

    async def positions(self, record: ConnectionRecord | None = None) -> list[Position]:
        """Every account's positions: from the connection's record while `record` holds (ib_insync's view, which
        IB keeps current by streaming position updates after the reqPositions sent at connect, never cancelled),
        else asked for afresh."""
        if record is not None and record.holds:
            return [views.position(p) for p in self._ib.positions()]
        self._gateway.require()
        return [views.position(p) for p in await self._gateway.requests.positions()]

    def cash_balances(self, account: str) -> dict[str, float]:
        return {
            v.currency: float(v.value)
            for v in self._ib.accountValues(account)
            if v.account == account and v.tag == "CashBalance" and v.currency and v.currency != "BASE"
        }

    def fx_rates(self, account: str) -> dict[str, float]:
        return market.fx_rates(self._ib, account)

    # -- instruments and market data ---------------------------------------------------------------------------------

    async def resolve(self, specs: Mapping[str, InstrumentSpec]) -> dict[str, Instrument]:
        self._gateway.require()
        return await self._instruments.resolve(specs)

    async def by_con_id(self, con_id: int) -> Instrument:
        self._gateway.require()
        return await self._instruments.by_con_id(con_id)

    async def listed(self, con_ids: Iterable[int]) -> tuple[dict[int, Instrument], dict[int, str]]:
        """By conId, asked together (ib_insync paces them): the instruments IB lists, and apart, each with why,
        those it no longer does (an expired future, a delisted stock), for the caller to leave out and name."""
        wanted = sorted(set(con_ids))
        answers = await asyncio.gather(*(self.by_con_id(c) for c in wanted), return_exceptions=True)
        found: dict[int, Instrument] = {}
        unlisted: dict[int, str] = {}
        for con_id, answer in zip(wanted, answers, strict=True):
            if isinstance(answer, UnlistedInstrument):
                unlisted[con_id] = answer.message
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found[con_id] = answer
        return found, unlisted

    async def fx_pair(self, currency: str, base: str) -> tuple[Instrument, bool]:
        """The IDEALPRO pair for currency/base and whether `currency` is its base (EUR.USD) or its quote (USD.JPY)."""
        self._gateway.require()
        return await fx_pair(self._instruments, currency, base)

    def market_data(self, instruments: Mapping[str, Instrument]) -> MarketData:
        return market.BrokerMarketData(self._ib, instruments, self._history, self._snapshot_timeout, self.now)

    async def bars(self, instrument: Instrument, duration: str, bar_size: str) -> list[HistoricalBar]:
        return await market.historical_bars(self._ib, self._history, instrument, duration, bar_size)

    async def prices(self, instruments: Iterable[Instrument], within: float | None = None) -> Prices:
        """{conId: price} from one snapshot each; an instrument without a usable price is left out (IB's refusal, if
        it gave one, in `refused`). `within`: seconds to wait for them (default: the service's snapshot timeout)."""
        return await market.snapshot_prices(self._ib, instruments, within or self._snapshot_timeout)

    async def quotes(self, instruments: Iterable[Instrument]) -> dict[int, Quote]:
        return await market.snapshot_quotes(self._ib, instruments, self._snapshot_timeout)

    async def market_fx_rates(self, currencies: Iterable[str], base: str) -> dict[str, float]:
        return await market.market_fx_rates(self._ib, self._instruments, currencies, base, self._snapshot_timeout)

    # -- orders and executions ---------------------------------------------------------------------------------------

    def order_engine(
        self,
        defaults: OrderDefaults,
        properties: Mapping[str, Any],
        timeout: float,
        account: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> OrderEngine:
        return OrderEngine(
            self._ib,
            self._gateway.requests,
            defaults,
            properties,
            timeout,
            account,
            progress=progress,
            lookup_timeout=self._gateway.order_lookup_timeout,
        )

    async def open_orders(self) -> list[BrokerOrder]:
        """Every order still working at the broker, whichever client placed it."""
        self._gateway.require()
        return [views.order(t) for t in await self._gateway.requests.open_orders() if not is_done(t.orderStatus.status)]

    @property
    def generation(self) -> int | None:
        """The synchronised connection's generation (None while it is away): a first run notes it at its start."""
        return self._gateway.synchronised()

    def ask_orders(self, record_since: int | None = None) -> OrderSnapshot:
        """Starts reading every open and completed order and execution, for a later `OrderEngine.find`.

        `record_since`, a first run's connection generation at its start: nothing is asked; the connection's own
        record is read at placing if that connection still holds, else the broker is asked then (ConnectionRecord).
        """
        self._gateway.require()
        if record_since is not None:
            return ConnectionRecord(record_since, self._gateway.synchronised)
        return ask_orders(self._gateway.requests)

    def record(self, since: int | None) -> ConnectionRecord | None:
        """The connection's record for an intent that started on generation `since` (None: there is none to read).

        Read by `executions`, `positions` and `find_orders` instead of asking, while that connection holds."""
        return None if since is None else ConnectionRecord(since, self._gateway.synchronised)

    async def find_orders(
        self,
        refs: set[str],
        within: float | None = None,
        record: ConnectionRecord | None = None,
        account: str | None = None,
        perm_ids: Mapping[str, int] | None = None,
    ) -> dict[str, Outcome]:
        """By orderRef; `account`: that account's orders only (a login's accounts share refs); `perm_ids`: a ref's
        order once IB numbered it, not another client's under the same ref (find_orders)."""
        within = self._gateway.order_lookup_timeout if within is None else within
        return await find_orders(
            self._ib, self._gateway.requests, refs, within, asked=record, account=account, perm_ids=perm_ids
        )

    async def cancel(self, orders: Iterable[BrokerOrder], within: float) -> dict[str, Outcome]:
        """Cancels these working orders of ours and waits until IB has finished each, by orderRef.

        Finished is Cancelled, or Filled when a fill raced the cancel. One not finished after `within` seconds is
        reported as it stands; the caller must not trade as if it were gone. An order of another client id is
        refused (ValueError): its orderId would name one of ours.
        """
        orders = list(orders)
        trades = self._trades(orders)
        if len(trades) < len(orders):  # not seen on this connection (a reconnect since): ask once more
            await self._gateway.requests.open_orders()
            trades = self._trades(orders)
        outcomes = await cancel_orders(self._ib, self._gateway.requests, trades, within)
        missing = {o.order_ref for o in orders} - outcomes.keys()
        if missing:  # no longer open at all: what it came to is found by orderRef, in its own account
            accounts = {o.account for o in orders if o.order_ref in missing}
            outcomes.update(
                await self.find_orders(missing, within, account=accounts.pop() if len(accounts) == 1 else None)
            )
        return outcomes

    def _trades(self, orders: list[BrokerOrder]) -> list[Trade]:
        """ib_insync's live trades for these orders (the objects its status events update), one per order."""
        found: dict[str, Trade] = {}
        for order in orders:
            for trade in self._ib.trades():
                o = trade.order
                same = (o.permId and o.permId == order.perm_id) or (o.clientId, o.orderId) == (
                    order.client_id,
                    order.order_id,
                )
                if same and o.orderRef == order.order_ref:
                    found[order.order_ref] = trade
        return list(found.values())

    async def executions(self, record: ConnectionRecord | None = None) -> list[Fill]:
        """Today's executions, as the gateway reports them when asked; while `record` holds, the connection's
        (`session_fills`: downloaded at connect, kept current by the live stream of our client id's fills)."""
        if record is not None and record.holds:
            return self.session_fills()
        self._gateway.require()
        fresh = [views.fill(f) for f in await self._gateway.requests.executions()]
        # ib_insync answers an execution it already holds with a new Fill whose commission report is empty, and files
        # IB's report on the Fill it held: read off the fresh copy alone, a commission that came late (another
        # client's execution, one of ours across a reconnect) was never booked.
        known = {f.exec_id: f for f in self.session_fills() if f.commission is not None}
        return [
            dataclasses.replace(
                f, commission=known[f.exec_id].commission, commission_currency=known[f.exec_id].commission_currency
            )
            if f.commission is None and f.exec_id in known
            else f
            for f in fresh
        ]

    def filled_at_connect(self, perm_id: int | None) -> float:
        """What an order had filled when this connection began (0 if it was not open then): fills from before the
        connection, which IB may no longer report as executions (an earlier day's)."""
        return self._gateway.filled_at_connect.get(perm_id, 0.0) if perm_id else 0.0

    def reported_since_connect(self, exec_id: str) -> bool:
        """An execution this connection heard live, not in its start-up download."""
        return exec_id not in self._gateway.reported_at_connect

    def session_fills(self) -> list[Fill]:
        """Executions this connection has seen, asked for or reported live (no request)."""
        return [views.fill(f) for f in self._ib.fills()]

    # -- live events -------------------------------------------------------------------------------------------------

    def on_fill(self, callback: Callable[[Fill], None]) -> None:
        """Every execution report and every commission report, as it arrives (the IB object lives for the whole
        process, across reconnects, so this is hooked once)."""
        ib = self._gateway.ib
        ib.execDetailsEvent += lambda trade, fill: callback(views.fill(fill))
        ib.commissionReportEvent += lambda trade, fill, report: callback(views.fill(fill))

    def on_order_done(self, callback: Callable[[BrokerOrder], None]) -> None:
        """Every order of ours (with an orderRef) that IB finishes: filled, cancelled or rejected."""

        def on_status(trade: Trade) -> None:
            if is_done(views.status(trade)) and trade.order.orderRef:
                callback(views.order(trade))

        self._gateway.ib.orderStatusEvent += on_status
