"""Handshake, client ids, connect speed, malformed input and unsupported requests."""

from __future__ import annotations

import statistics
import struct
import time

import pytest
from ib_insync import IB, LimitOrder, MarketOrder, Stock

from ibsim import ThreadedGateway
from ibsim.protocol import MAX_VERSION
from tests.support import wait_for

from .conftest import ensure_loop, wait_until


def test_connect_completes_fast_without_startup_timeouts(gw: ThreadedGateway, connect, caplog) -> None:
    times = []
    for client_id in range(1, 6):
        t0 = time.perf_counter()
        ib = connect(client_id)
        times.append(time.perf_counter() - t0)
        assert ib.isConnected()
        assert ib.client.serverVersion() == min(ib.client.MaxClientVersion, MAX_VERSION) == 176
        assert ib.managedAccounts() == ["DU123456"]
    assert statistics.median(times) < 0.2, times
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]
    assert gw.connected_client_ids() == [1, 2, 3, 4, 5]


def test_farm_notices_arrive_as_warnings(gw: ThreadedGateway) -> None:
    ensure_loop()
    ib = IB()
    codes: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
    ib.connect("127.0.0.1", gw.port, clientId=3, timeout=4)
    try:
        wait_until(ib, lambda: {2104, 2106, 2158} <= set(codes), what="farm notices")
    finally:
        ib.disconnect()


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ("v100..200", 178),
        ("v157..176", 176),  # ib_insync 0.9.86
        ("v157..178", 178),  # ib_async 2.0: IB Gateway 10.19+ answers 178, not 176
        ("v157..160", 160),
        ("v100..157", 157),
        ("v170..187 +PACEAPI", 178),
    ],
)
def test_handshake_picks_highest_common_version(raw, versions: str, expected: int) -> None:
    r = raw(versions)
    hello = r.recv()
    assert hello is not None
    assert len(hello) == 2
    assert int(hello[0]) == expected
    assert hello[1][:8].isdigit()


def test_from_v177_open_orders_drop_fa_profile_and_from_v178_executions_carry_pending_price_revision(
    ib: IB, raw
) -> None:
    """The two layouts IB changed between 176 and 178, as IB's ibapi and ib_async read them."""
    filled = ib.placeOrder(Stock("SPY", "SMART", "USD"), MarketOrder("BUY", 10, orderRef="v178-fill"))
    wait_until(ib, filled.isDone, what="the fill")
    ib.placeOrder(Stock("SPY", "SMART", "USD"), LimitOrder("BUY", 1, 100.0, orderRef="v178-working"))
    layouts = {}
    for client_id, versions in ((31, "v157..176"), (32, "v157..178")):
        r = raw(versions)
        r.start(client_id)
        r.send(7, 3, 1, 0, "", "", "", "", "", "")  # reqExecutions, no filter
        execution = r.until(lambda m: m[0] == "11")
        r.send(16, 1)  # reqAllOpenOrders
        working = r.until(lambda m: m[0] == "5" and "v178-working" in m)
        layouts[versions] = (execution, working)
    (exec176, open176), (exec178, open178) = layouts["v157..176"], layouts["v157..178"]
    assert exec178[:-1] == exec176
    assert exec178[-1] == "0"  # pendingPriceRevision: false
    # no faProfile: the same fields less one empty one
    assert any(open176[:i] + open176[i + 1 :] == open178 for i, f in enumerate(open176) if f == "")
    assert len(open178) == len(open176) - 1


@pytest.mark.parametrize(("versions", "code"), [("v180..190", "503"), ("v100..150", "506")])
def test_handshake_without_common_version_errors_and_closes(raw, versions: str, code: str) -> None:
    r = raw(versions)
    msg = r.recv()
    assert msg is not None
    assert msg[0] == "4"
    assert msg[3] == code
    assert r.closed()


def test_duplicate_client_id_gets_326_and_is_closed(gw: ThreadedGateway, connect) -> None:
    first = connect(7)
    ensure_loop()
    second = IB()
    errors: list[int] = []
    second.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    with pytest.raises((TimeoutError, ConnectionError)):
        second.connect("127.0.0.1", gw.port, clientId=7, timeout=1)
    assert 326 in errors
    assert not second.isConnected()
    assert first.reqCurrentTime()
    assert gw.connected_client_ids() == [7]
    # the id is free again once its owner leaves
    first.disconnect()
    wait_for(lambda: gw.connected_client_ids() == [], what="client 7 to go away")
    third = connect(7)
    assert third.isConnected()


def test_malformed_frames_close_only_that_connection(gw: ThreadedGateway, ib: IB, raw) -> None:
    garbage = raw()
    garbage.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert garbage.closed()

    bad_length = raw()
    bad_length.start(50)
    bad_length.sock.sendall(struct.pack(">I", 0xFFFFFFF0) + b"xx")
    assert bad_length.closed()

    bad_id = raw()
    bad_id.start(51)
    bad_id.send("notanumber", 1)
    assert bad_id.closed()

    assert ib.isConnected()
    assert ib.reqCurrentTime()
    assert gw.connected_client_ids() == [1]


def test_unsupported_request_gets_321_and_never_hangs(ib: IB, raw) -> None:
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    assert not ib.reqMatchingSymbols("SP")  # returns at all: ib_insync ends the request on the 321
    assert any(code == 321 and "Unsupported request" in msg for _, code, msg in errors)

    r = raw()
    r.start(60)
    r.send(82)  # reqMktDepthExchanges: no request id
    msg = r.until(lambda m: m[0] == "4" and m[3] == "321")
    assert msg[2] == "-1"
    r.send(87, 4242, 0, "SPY", "STK", "", 0, "", "", "SMART", "", "USD", "", "", 0, 1, "TRADES", 1)
    msg = r.until(lambda m: m[0] == "4" and m[3] == "321")
    assert msg[2] == "4242"


def test_reconnect_after_disconnect_keeps_serving(gw: ThreadedGateway, connect) -> None:
    ib = connect(9)
    ib.disconnect()
    wait_for(lambda: 9 not in gw.connected_client_ids(), what="disconnect seen")
    ib2 = connect(9)
    assert ib2.reqCurrentTime()


def test_client_id_zero_with_auto_open_orders(gw: ThreadedGateway, connect) -> None:
    ib = connect(0)  # ib_insync sends reqAutoOpenOrders for client 0: tolerated, no answer needed
    assert ib.isConnected()
    assert gw.connected_client_ids() == [0]


def test_ibapi_client_connects(gw: ThreadedGateway) -> None:
    """IB's own client (a dev dependency); 9.81 announces v100..157 and gets 157."""
    import threading

    from ibapi.client import EClient
    from ibapi.contract import Contract
    from ibapi.order import Order
    from ibapi.wrapper import EWrapper

    class App(EWrapper, EClient):
        def __init__(self) -> None:
            EClient.__init__(self, self)
            self.statuses: list[str] = []
            self.ready = threading.Event()
            self.filled = threading.Event()
            self.next_id = 0

        def nextValidId(self, orderId: int) -> None:
            self.next_id = orderId
            self.ready.set()

        def orderStatus(self, orderId, status, filled, *rest) -> None:
            self.statuses.append(status)
            if status == "Filled":
                self.filled.set()

    app = App()
    app.connect("127.0.0.1", gw.port, 21)
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    try:
        assert app.ready.wait(5)
        assert app.serverVersion() <= MAX_VERSION
        c = Contract()
        c.symbol, c.secType, c.exchange, c.currency = "SPY", "STK", "SMART", "USD"
        o = Order()
        o.action, o.totalQuantity, o.orderType = "BUY", 10, "MKT"
        app.placeOrder(app.next_id, c, o)
        assert app.filled.wait(5)
        assert app.statuses[:2] == ["PreSubmitted", "Submitted"]
        assert gw.positions() == {"SPY": 10}
    finally:
        # The message loop ends itself and closes the socket in its own finally: ibapi's disconnect() is not
        # thread-safe, and called from here as well it raced that one (AttributeError in the loop's thread).
        app.setConnState(EClient.DISCONNECTED)
        thread.join(5)
    assert not thread.is_alive()
    assert app.conn is None  # the loop's disconnect ran
