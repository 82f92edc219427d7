"""Market-data and account requests IB Gateway refuses, refused as IB does: TRADES history of a forex pair (162),
generic ticks on a snapshot (321), a cancel of an id IB holds nothing for (300), a ticker id still in use (322), an
account the login does not manage (321 "Invalid account code"). ibsim answered them, or refused in words of its
own (found by an independent review of ibsim's realism; each test failed before). Each cites its source."""

from __future__ import annotations

import math
import time

from ib_insync import IB, Forex, Stock

from ibsim import ThreadedGateway
from tests.ibsim.conftest import wait_until

SPY = Stock("SPY", "SMART", "USD")


def errors_of(ib: IB) -> list[tuple[int, int, str]]:
    """(reqId, code, text) of every error the client is sent from now on."""
    seen: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((req_id, code, msg))
    return seen


def settle(ib: IB, seconds: float = 0.5) -> None:
    """Lets the client read what the gateway sends for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ib.sleep(0.05)


def test_trades_history_of_a_forex_pair_is_refused_with_162(ib: IB) -> None:
    """IB has no trades for IDEALPRO forex: a TRADES history request for a CASH pair is refused with 162
    "Historical Market Data Service error message:No historical market data for EUR/CASH@FXSUBPIP Last 1d" (the
    bar size after 'Last'), and no bar is sent: ranaroussi/ezibpy#24 ("[#162] Historical Market Data Service error
    message:No historical market data for EUR/CASH@FXSUBPIP Last 1d ... Interactive Brokers does not disseminate
    TRADES data for cash FX"), erdewit/ib_insync#316 ("No historical market data for CHF/CASH@FXSUBPIP Last 300"),
    ib-ruby/ib-ruby#50 ("No historical market data for EUR/CASH@IDEALPRO Last 60"). ibsim serves daily bars with
    volume -1 (ibsim/bars.py:322), so a client asking TRADES for forex is never told it is wrong."""
    errors = errors_of(ib)
    eur = ib.qualifyContracts(Forex("EURUSD"))[0]
    bars = ib.reqHistoricalData(eur, "", "5 D", "1 day", "TRADES", True)
    assert len(bars) == 0
    assert [(code, text) for _, code, text in errors] == [
        (162, "Historical Market Data Service error message:No historical market data for EUR/CASH@FXSUBPIP Last 1d")
    ]
    # what IB does serve for forex still answers
    assert len(ib.reqHistoricalData(eur, "", "5 D", "1 day", "MIDPOINT", True)) > 0


def test_a_snapshot_with_generic_ticks_is_refused_with_321(gw: ThreadedGateway, ib: IB) -> None:
    """IB refuses a snapshot that asks for generic ticks: 321 "Error validating request.-'bO' : cause - Snapshot
    market data subscription is not applicable to generic ticks", and sends no tick (IB's message list, code 414
    "Snapshot market data subscription is not applicable to generic ticks."; users' gateways answer it as 321 with
    that cause: "IBKR rejects snapshot=True combined with any non-empty generic tick list"). ibsim skips the
    generic tick list (ibsim/marketdata.py:146) and answers the snapshot."""
    errors = errors_of(ib)
    ticker = ib.reqMktData(SPY, "236", True, False)
    settle(ib)
    assert [code for _, code, _ in errors] == [321], errors
    assert errors[0][2].endswith("cause - Snapshot market data subscription is not applicable to generic ticks")
    assert math.isnan(ticker.bid)  # no tick
    assert math.isnan(ticker.last)
    assert gw.open_snapshots() == 0


def test_cancelling_an_unknown_market_data_id_is_error_300(ib: IB) -> None:
    """cancelMktData of an id IB holds no market data for (never requested, or a snapshot already ended) is
    answered 300 "Can't find EId with tickerId:N": the raw message `4,2,9003,300,"Can't find EId with
    tickerId:9003",""` after cancelling an ended snapshot (wboayue/rust-ibapi#236); "IB can reply asynchronously
    with error 300 (Can't find EId with tickerId:N) because it no longer has an active market-data subscription
    for that ticker" (QuantConnect/Lean.Brokerages.InteractiveBrokers#237); stoqey/ib#240. ibsim drops the cancel
    without a word (ibsim/marketdata.py:215-221)."""
    errors = errors_of(ib)
    ib.client.cancelMktData(9003)
    wait_until(ib, lambda: errors, timeout=2, what="an answer to the cancel")
    assert errors == [(9003, 300, "Can't find EId with tickerId:9003")]


def test_a_market_data_request_reusing_a_live_ticker_id_is_refused(ib: IB) -> None:
    """A reqMktData whose id is another live request's is refused: "Error processing request.-'bO' : cause -
    Duplicate ticker id (Error #322)" (stoqey/ib#240, reusing ids of streams still open at the gateway); IB's
    message codes list "102 Duplicate ticker ID." (API message codes, individuals.interactivebrokers.com
    api_message_codes.htm). ibsim silently replaces the first stream with the second (ibsim/marketdata.py:167)."""
    errors = errors_of(ib)
    req_id = ib.client.getReqId()
    ib.client.reqMktData(req_id, SPY, "", False, False, [])
    settle(ib, 0.3)
    assert errors == []
    ib.client.reqMktData(req_id, Stock("QQQ", "SMART", "USD"), "", False, False, [])
    wait_until(ib, lambda: errors, timeout=2, what="the refusal of the duplicate id")
    [(rid, code, text)] = errors
    assert rid == req_id
    assert code in (102, 322)
    assert "duplicate ticker id" in text.lower()


def test_account_updates_for_an_account_not_managed_is_invalid_account_code(ib: IB) -> None:
    """reqAccountUpdates for an account the login does not manage is refused with 321 "Error validating
    request.-'bk' : cause - Invalid account code '1'." (the R IBrokers client's reqAccountUpdates with its
    default acctCode "1", as a user's script records it; ranaroussi/ezibpy#29 "[#321] Error validating
    request:-'bp' : cause - Invalid account code '0'."; ranaroussi/qtpylib#38). ibsim answers 321 with its own
    cause "unknown account DU999999" (ibsim/account.py:52): a client matching IB's text never recognises it.
    The consumer connects with `account=` its configured IB_ACCOUNT (consumer/broker/gateway.py:252-258), so a
    misconfigured account is this request."""
    errors = errors_of(ib)
    ib.client.reqAccountUpdates(True, "DU999999")
    wait_until(ib, lambda: errors, timeout=2, what="the refusal")
    [(_, code, text)] = errors
    assert code == 321
    assert "cause - Invalid account code" in text, text


def test_pnl_for_an_account_not_managed_is_invalid_account_code(ib: IB) -> None:
    """reqPnL for an account the login does not manage: 321 "Error validating request.-'ci' : cause - Invalid
    account code" with the request's id (a user's IB Gateway log of `client.reqPnL(10001, SUB_ACCOUNT_ID, "")`
    with a live account id on a paper login, 2026); the same cause for the multi-account requests
    (deephaven-examples/deephaven-ib#54, #50: "ERROR 5 321 Error validating request.-'cq' : cause - Invalid
    account code"). ibsim: "cause - unknown account DU999999" (ibsim/account.py:164, and :98 for
    reqAccountUpdatesMulti)."""
    errors = errors_of(ib)
    ib.reqPnL("DU999999")
    wait_until(ib, lambda: errors, timeout=2, what="the refusal")
    [(_, code, text)] = errors
    assert code == 321
    assert "cause - Invalid account code" in text, text
    errors.clear()
    req_id = ib.client.getReqId()
    ib.client.reqAccountUpdatesMulti(req_id, "DU999999", "", False)
    wait_until(ib, lambda: errors, timeout=2, what="the refusal")
    [(rid, code, text)] = errors
    assert (rid, code) == (req_id, 321)
    assert "cause - Invalid account code" in text, text


def test_contract_details_of_a_listed_instrument_answer_200_under_the_fault(gw: ThreadedGateway, ib: IB) -> None:
    """IB answers 200 for an instrument it lists while its data connections are down (ib_insync#330): the fault
    `no_security_definition` gives it, for that symbol only, by symbol or conId, until it is turned off."""
    [spy] = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))
    errors = errors_of(ib)
    gw.no_security_definition("SPY")
    assert ib.reqContractDetails(Stock(conId=spy.conId)) == []
    assert ib.reqContractDetails(Stock("SPY", "SMART", "USD")) == []
    assert [e[1:] for e in errors] == [(200, "No security definition has been found for the request")] * 2
    assert len(ib.reqContractDetails(Stock("QQQ", "SMART", "USD"))) == 1
    gw.no_security_definition("SPY", on=False)
    [details] = ib.reqContractDetails(Stock(conId=spy.conId))
    assert details.contract is not None
    assert details.contract.conId == spy.conId
