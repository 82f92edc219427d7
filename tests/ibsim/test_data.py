"""Contracts, account, positions and market data through ib_insync."""

from __future__ import annotations

import datetime as dt

import pytest
from ib_insync import IB, Contract, Forex, Future, MarketOrder, Stock

from ibsim import Scenario, ThreadedGateway
from tests.support import CLOCKS, EVERY_CLOCK, sim_scenario

from .conftest import ensure_loop, wait_until


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    # snapshots end when answered: these tests read their ticks, not IB's end 11 s later (test_snapshot_end.py)
    return {"marketData": {"snapshotEndSeconds": 0}}


def values(ib: IB, tag: str) -> dict[str, float]:
    return {v.currency: float(v.value) for v in ib.accountValues() if v.tag == tag}


# -- contracts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("contract", "expected"),
    [
        (Stock("SPY", "SMART", "USD"), ("STK", "SMART", "USD", "ARCA", 756733)),
        (Stock("SPY", "ARCA", "USD"), ("STK", "ARCA", "USD", "ARCA", 756733)),
        (Stock("AAPL", "NASDAQ", "USD"), ("STK", "NASDAQ", "USD", "NASDAQ", 265598)),
        (Stock("SYM007", "NYSE", "USD"), ("STK", "NYSE", "USD", "NYSE", None)),
        (Stock("SAP", "IBIS", "EUR"), ("STK", "IBIS", "EUR", "IBIS", None)),
        (Stock("SAP", "SMART", "EUR"), ("STK", "SMART", "EUR", "IBIS", None)),
        (Forex("EURUSD"), ("CASH", "IDEALPRO", "USD", "", 12087792)),
        (Forex("USDJPY"), ("CASH", "IDEALPRO", "JPY", "", 15016059)),
        (Future("ES", exchange="CME"), ("FUT", "CME", "USD", "", None)),
    ],
    ids=lambda v: getattr(v, "symbol", "") + getattr(v, "exchange", "") if isinstance(v, Contract) else "",
)
def test_qualify_each_kind(ib: IB, contract: Contract, expected: tuple) -> None:
    sec_type, exchange, currency, primary, con_id = expected
    [q] = ib.qualifyContracts(contract)
    assert q.conId > 0
    if con_id:
        assert q.conId == con_id
    assert (q.secType, q.exchange, q.currency) == (sec_type, exchange, currency)
    if primary:
        assert q.primaryExchange == primary


@pytest.mark.parametrize(**EVERY_CLOCK)
def test_future_details(gw: ThreadedGateway, ib: IB) -> None:
    [d] = ib.reqContractDetails(Future("ES", exchange="CME"))
    c = d.contract
    assert c.multiplier == "50"
    assert len(c.lastTradeDateOrContractMonth) == 8
    expiry = dt.datetime.strptime(c.lastTradeDateOrContractMonth, "%Y%m%d").date()
    today = gw.now().date()
    assert today <= expiry < today + dt.timedelta(days=100)  # the front quarterly, by the gateway's calendar
    # The third Friday of a quarter's month, or the business day before it when that is a holiday (CME): the June
    # 2026 contract expires on Thursday the 18th, Juneteenth closing the 19th.
    assert expiry.month % 3 == 0
    assert (expiry.weekday(), 15 <= expiry.day <= 21) == (4, True) or expiry == dt.date(2026, 6, 18)
    assert d.contractMonth == c.lastTradeDateOrContractMonth[:6]
    assert d.minTick == 0.25
    # qualifying by month works too
    [q] = ib.qualifyContracts(Future("ES", c.lastTradeDateOrContractMonth[:6], "CME"))
    assert q.conId == c.conId


def test_contract_details_hours_always_open() -> None:
    with ThreadedGateway(port=0, scenario=sim_scenario({"hours": "always"}, CLOCKS["saturday"])) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            [d] = ib.reqContractDetails(Stock("SPY", "SMART", "USD"))
            assert d.timeZoneId == "America/New_York"
            sessions = d.tradingSessions()
            now = gw.now()
            assert any(s.start <= now < s.end for s in sessions)
            assert d.liquidHours == d.tradingHours
            assert d.longName == "SPDR S&P 500 ETF TRUST"
            assert d.stockType == "ETF"
        finally:
            ib.disconnect()


@pytest.mark.parametrize("clock", CLOCKS.values(), ids=CLOCKS.keys())
def test_contract_details_regular_hours(clock: str) -> None:
    scenario = Scenario.from_dict({"hours": "regular", "clock": {"start": clock}})
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            [d] = ib.reqContractDetails(Stock("AAPL", "SMART", "USD"))
            days = d.liquidHours.split(";")
            weekday = next(x for x in days if not x.endswith("CLOSED"))
            assert weekday.endswith("0930-" + weekday[:8] + ":1600")
            early_closes = {"20261127"}  # the day after Thanksgiving: NYSE closes at 13:00
            for s in d.liquidSessions():
                assert s.start.weekday() < 5
                close = 13 if s.start.strftime("%Y%m%d") in early_closes else 16
                assert (s.start.hour, s.start.minute, s.end.hour) == (9, 30, close)
            assert any(x.endswith("CLOSED") for x in days)
            [sap] = ib.reqContractDetails(Stock("SAP", "IBIS", "EUR"))
            assert sap.timeZoneId == "Europe/Berlin"
        finally:
            ib.disconnect()


def test_unknown_contract_gets_200(ib: IB) -> None:
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    assert ib.qualifyContracts(Stock("NOSUCH", "SMART", "USD")) == []
    assert ib.reqContractDetails(Stock("SPY", "SMART", "EUR")) == []
    assert errors == [200, 200]


# -- account ---------------------------------------------------------------------------------------------------------
def test_account_values_at_start(ib: IB) -> None:
    wanted = {"NetLiquidation", "TotalCashValue", "CashBalance", "BuyingPower", "AvailableFunds", "ExchangeRate"}
    assert wanted <= {v.tag for v in ib.accountValues()}
    cash = values(ib, "CashBalance")
    assert cash == {"USD": 1_000_000, "EUR": 50_000, "BASE": pytest.approx(1_000_000 + 50_000 * 1.085)}
    assert values(ib, "ExchangeRate")["EUR"] == pytest.approx(1.085)
    assert values(ib, "NetLiquidation")["USD"] == pytest.approx(1_054_250)
    assert values(ib, "GrossPositionValue")["USD"] == 0
    summary = {(v.tag, v.currency): float(v.value) for v in ib.accountSummary() if v.tag != "AccountType"}
    assert summary[("NetLiquidation", "USD")] == pytest.approx(1_054_250)
    assert summary[("TotalCashValue", "USD")] == pytest.approx(1_054_250)


def test_account_values_move_after_a_fill(gw: ThreadedGateway, ib: IB) -> None:
    trade = ib.placeOrder(Stock("MSFT", "SMART", "USD"), MarketOrder("BUY", 100))
    wait_until(ib, trade.isDone, what="fill")
    commission = trade.fills[0].commissionReport.commission
    assert values(ib, "CashBalance")["USD"] == 1_000_000  # the account window follows the fill a moment later
    # The account values and the portfolio row come in separate messages: wait for both.
    wait_until(
        ib,
        lambda: values(ib, "CashBalance")["USD"] != 1_000_000 and ib.portfolio(),
        what="the account values and the portfolio after the fill",
    )
    assert values(ib, "CashBalance")["USD"] == pytest.approx(1_000_000 - 100 * 420.01 - commission)
    assert values(ib, "GrossPositionValue")["USD"] == pytest.approx(42_000)
    assert values(ib, "NetLiquidation")["USD"] == pytest.approx(1_054_250 - 1.0 - commission)
    [item] = ib.portfolio()
    assert (item.contract.symbol, item.position, item.marketPrice, item.marketValue) == ("MSFT", 100, 420.0, 42_000)
    assert item.averageCost == pytest.approx(420.01 + commission / 100)
    # The market moves: reqPnL follows at once, the account window at the next tick of IB's three-minute interval.
    pnl = ib.reqPnL("DU123456")
    wait_until(ib, lambda: pnl.unrealizedPnL == pnl.unrealizedPnL, what="pnl")  # not NaN
    gw.set_price("MSFT", 430.0)
    wait_until(ib, lambda: pnl.unrealizedPnL == pytest.approx(1_000 - 1.0 - commission), what="pnl after the move")
    ib.reqCurrentTime()  # a round trip: anything the gateway sent with the PnL has arrived
    assert ib.portfolio()[0].marketPrice == 420.0
    assert values(ib, "NetLiquidation")["USD"] == pytest.approx(1_054_250 - 1.0 - commission)
    gw.advance_time(180)  # past the interval's tick (the clock started on one; the tick is on the gateway's clock)
    wait_until(ib, lambda: ib.portfolio()[0].marketPrice == 430.0, what="portfolio update")
    wait_until(ib, lambda: values(ib, "NetLiquidation")["USD"] == pytest.approx(1_055_249 - commission), what="new NLV")


def test_a_position_change_sends_the_account_as_it_stands(gw: ThreadedGateway, ib: IB) -> None:
    """Between the interval's ticks, a position change sends the whole account window at once, marks included."""
    gw.set_position("MSFT", 100, avg_cost=42_000.0)
    wait_until(ib, lambda: [i.marketPrice for i in ib.portfolio()] == [420.0], what="the position's portfolio row")
    gw.set_price("MSFT", 425.0)
    gw.set_position("AAPL", 10, avg_cost=1_500.0)
    wait_until(ib, lambda: len(ib.portfolio()) == 2, what="the new position")
    assert {i.contract.symbol: i.marketPrice for i in ib.portfolio()}["MSFT"] == 425.0


def test_positions_changed_behind_the_clients_back(gw: ThreadedGateway, ib: IB) -> None:
    gw.set_position("AAPL", 250, avg_cost=150.0)
    wait_until(ib, lambda: [(p.contract.symbol, p.position) for p in ib.positions()] == [("AAPL", 250)], what="pos")
    [pos] = ib.positions()
    assert pos.avgCost == 150.0
    assert gw.positions() == {"AAPL": 250}
    assert gw.cash()["USD"] == 1_000_000  # cash unchanged
    gw.set_cash("USD", 5_000.0)
    wait_until(ib, lambda: values(ib, "CashBalance").get("USD") == 5_000, what="cash")
    # and a fresh client sees them at once
    ensure_loop()
    other = IB()
    other.connect("127.0.0.1", gw.port, clientId=2, timeout=4)
    try:
        assert [(p.contract.symbol, p.position) for p in other.positions()] == [("AAPL", 250)]
        assert [(p.contract.symbol, p.position) for p in other.reqPositions()] == [("AAPL", 250)]
    finally:
        other.disconnect()
    gw.set_position("AAPL", 0)
    wait_until(ib, lambda: ib.positions() == [], what="position gone")


def test_pnl_subscription(ib: IB) -> None:
    pnl = ib.reqPnL("DU123456")
    wait_until(ib, lambda: pnl.unrealizedPnL == pnl.unrealizedPnL, what="pnl")  # not NaN
    assert pnl.unrealizedPnL == 0


# -- market data -----------------------------------------------------------------------------------------------------
def test_snapshot_tickers(ib: IB) -> None:
    spy, eur, es = ib.qualifyContracts(Stock("SPY", "SMART", "USD"), Forex("EURUSD"), Future("ES", exchange="CME"))
    tickers = ib.reqTickers(spy, eur, es)
    t_spy, t_eur, t_es = tickers
    assert (t_spy.bid, t_spy.ask, t_spy.last, t_spy.close) == (519.99, 520.01, 520.0, 520.0)
    assert t_spy.bidSize > 0
    assert (t_eur.bid, t_eur.ask) == (1.08495, 1.08505)
    assert t_eur.marketPrice() == pytest.approx(1.085)
    assert (t_es.bid, t_es.ask) == (5249.75, 5250.25)


def test_delayed_market_data_is_ignored_when_live_data_is_subscribed(gw: ThreadedGateway, ib: IB) -> None:
    ib.reqMarketDataType(3)
    [t] = ib.reqTickers(Stock("AAPL", "SMART", "USD"))
    assert (t.bid, t.ask, t.last) == (189.99, 190.01, 190.0)
    assert t.marketDataType == 1
    assert gw.market_data_types() == [(1, 3)]


def test_without_a_live_subscription_live_data_is_354_and_delayed_data_comes_with_10167() -> None:
    ensure_loop()
    with ThreadedGateway(
        scenario=sim_scenario({"marketData": {"liveSubscription": False, "snapshotEndSeconds": 0}})
    ) as gw:
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            errors: list[tuple[int, str]] = []
            ib.errorEvent += lambda req_id, code, msg, contract: errors.append((code, msg))
            aapl = Stock("AAPL", "SMART", "USD")
            [live] = ib.reqTickers(aapl)
            assert live.bid != live.bid  # nan: nothing came
            assert errors[-1][0] == 354
            assert errors[-1][1].startswith("Requested market data is not subscribed.")

            ib.reqMarketDataType(3)
            [delayed] = ib.reqTickers(aapl)
            assert (delayed.bid, delayed.ask, delayed.last) == (189.99, 190.01, 190.0)
            assert delayed.marketDataType == 3
            assert errors[-1] == (10167, "Requested market data is not subscribed. Displaying delayed market data.")
            assert gw.market_data_types() == [(1, 3)]
        finally:
            ib.disconnect()


def test_streaming_ticks_follow_the_price(gw: ThreadedGateway, ib: IB) -> None:
    [qqq] = ib.qualifyContracts(Stock("QQQ", "SMART", "USD"))
    ticker = ib.reqMktData(qqq)
    wait_until(ib, lambda: ticker.last == 440.0, what="first ticks")
    gw.set_price("QQQ", 441.5)
    wait_until(ib, lambda: (ticker.bid, ticker.ask, ticker.last) == (441.49, 441.51, 441.5), what="new ticks")
    ib.cancelMktData(qqq)
    gw.set_price("QQQ", 450.0)
    ib.sleep(0.05)
    assert ticker.last == 441.5


def test_unknown_market_data_is_200(ib: IB) -> None:
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    [t] = ib.reqTickers(Stock("NOSUCH", "SMART", "USD", conId=0))
    assert t.bid != t.bid  # NaN: nothing arrived
    assert 200 in errors


@pytest.mark.parametrize(**EVERY_CLOCK)
def test_historical_daily_bars_are_deterministic(gw: ThreadedGateway, ib: IB, market_clock: str) -> None:
    spy = Stock("SPY", "SMART", "USD")
    bars = ib.reqHistoricalData(spy, "", "60 D", "1 day", "TRADES", True)
    again = ib.reqHistoricalData(spy, "", "60 D", "1 day", "TRADES", True)
    assert len(bars) == 60
    assert list(bars) == list(again)
    assert bars[-1].close == 520.0
    assert all(isinstance(b.date, dt.date) and b.date.weekday() < 5 for b in bars)
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
    assert len({b.close for b in bars}) > 50  # it moves
    year = ib.reqHistoricalData(spy, "", "1 Y", "1 day", "TRADES", True)
    assert 250 <= len(year) <= 262
    # same seed, same bars, from another server
    with ThreadedGateway(port=0, scenario=Scenario.from_dict({"clock": {"start": market_clock}})) as other:
        ensure_loop()
        ib2 = IB()
        ib2.connect("127.0.0.1", other.port, clientId=1, timeout=4)
        try:
            assert list(ib2.reqHistoricalData(spy, "", "60 D", "1 day", "TRADES", True)) == list(bars)
        finally:
            ib2.disconnect()


def test_historical_intraday_bars(ib: IB) -> None:
    spy = Stock("SPY", "SMART", "USD")
    end = dt.datetime(2024, 3, 14, 20, 0, tzinfo=dt.UTC)  # a Thursday, 16:00 in New York
    bars = ib.reqHistoricalData(spy, end, "1 D", "5 mins", "TRADES", True)
    assert len(bars) == 78
    assert bars[0].date == dt.datetime(2024, 3, 14, 9, 30, tzinfo=bars[0].date.tzinfo)
    assert list(bars) == list(ib.reqHistoricalData(spy, end, "1 D", "5 mins", "TRADES", True))
    hourly = ib.reqHistoricalData(spy, end, "2 D", "1 hour", "TRADES", False)
    assert len(hourly) == 16 + 12  # 04:00-20:00 the day before, 04:00-16:00 on the day
    epoch = ib.reqHistoricalData(spy, end, "1 D", "30 mins", "TRADES", True, formatDate=2)
    assert epoch[0].date == dt.datetime(2024, 3, 14, 13, 30, tzinfo=dt.UTC)
    fx = ib.reqHistoricalData(Forex("EURUSD"), end, "5 D", "1 day", "MIDPOINT", True)
    assert len(fx) == 5
    assert fx[-1].close == 1.085


def test_historical_errors(ib: IB) -> None:
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    assert not ib.reqHistoricalData(Stock("NOSUCH", "SMART", "USD"), "", "5 D", "1 day", "TRADES", True)
    assert not ib.reqHistoricalData(Stock("SPY", "SMART", "USD"), "", "5 X", "1 day", "TRADES", True)
    assert errors == [200, 162]


def test_scenario_bars_are_served() -> None:
    bars = [
        {"date": "2024-01-02", "open": 10, "high": 11, "low": 9, "close": 10.5, "volume": 1000},
        {"date": "20240103", "open": 10.5, "high": 12, "low": 10, "close": 11.5, "volume": 2000},
    ]
    scenario = sim_scenario(
        {"instruments": [{"symbol": "XYZ", "secType": "STK", "primaryExchange": "NYSE", "price": 11.5, "bars": bars}]}
    )
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            got = ib.reqHistoricalData(
                Stock("XYZ", "SMART", "USD"), "20240105 23:00:00 UTC", "5 D", "1 day", "TRADES", 1
            )
            assert [(b.date.isoformat(), b.close, b.volume) for b in got] == [
                ("2024-01-02", 10.5, 1000),
                ("2024-01-03", 11.5, 2000),
            ]
        finally:
            ib.disconnect()


def test_volatile_instruments_walk_and_stream() -> None:
    scenario = sim_scenario(
        {
            "seed": 3,
            "instruments": [{"symbol": "JUMPY", "secType": "STK", "primaryExchange": "NYSE", "price": 50.0,
                             "volatility": 3.0}],
            "generated": {"count": 0},
            "marketData": {"tickIntervalMs": 20},
        }
    )  # fmt: skip
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        try:
            ticker = ib.reqMktData(Stock("JUMPY", "SMART", "USD"))
            wait_until(ib, lambda: ticker.last == ticker.last, what="first tick")  # not NaN
            seen = {ticker.last}
            wait_until(ib, lambda: seen.add(ticker.last) or len(seen) >= 3, what="the price to walk")
        finally:
            ib.disconnect()
