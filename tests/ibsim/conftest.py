"""Fixtures for the simulated gateway's tests: a gateway per test, real ib_insync clients, raw sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ib_insync import IB, Contract, MarketOrder, Trade

from ibsim import ThreadedGateway
from tests.support import ensure_loop, sim_scenario, wait_for

ROOT = Path(__file__).resolve().parents[2]


def wait_until(ib: IB, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """tests.support.wait_for with ib_insync processing messages between polls."""
    return wait_for(predicate, timeout, what, interval=0.005, ib=ib)


@contextlib.contextmanager
def kept_state(state: Path, client_id: int = 3) -> Iterator[tuple[ThreadedGateway, IB]]:
    """A simulated gateway that keeps its state in `state` (as across a restart), on the tests' clock, and an
    ib_insync client of it, disconnected before the gateway stops."""
    with ThreadedGateway(port=0, scenario=sim_scenario(), state_file=state) as gw:
        ensure_loop()
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=client_id, timeout=4)
        try:
            yield gw, ib
        finally:
            ib.disconnect()


def cancel_left_pending(gw: ThreadedGateway, ib: IB, ref: str, contract: Contract) -> Trade:
    """A buy that cannot fill (fills held), cancelled and left PendingCancel: the exchange confirms in 10 minutes."""
    gw.hold_fills(True)
    gw.cancel_delay(600)
    trade = ib.placeOrder(contract, MarketOrder("BUY", 5, orderRef=ref))
    wait_until(ib, lambda: trade.orderStatus.status == "Submitted", what="Submitted")
    ib.cancelOrder(trade.order)
    wait_until(ib, lambda: gw.orders()[0]["status"] == "PendingCancel", what="PendingCancel at the gateway")
    return trade


def symbol_errors(ib: IB) -> list[tuple[str, int, str]]:
    """(symbol, code, text) of each error the client is sent from now on, for market-data refusals."""
    seen: list[tuple[str, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: seen.append((contract.symbol if contract else "", code, msg))
    return seen


@pytest.fixture
def gw(gateway: ThreadedGateway) -> ThreadedGateway:
    """The test's simulated gateway (tests/conftest.py's `gateway`), under the name these tests use."""
    return gateway


@pytest.fixture
def connect(gw: ThreadedGateway) -> Iterator[Callable[..., IB]]:
    clients: list[IB] = []

    def _connect(client_id: int = 1, port: int | None = None, timeout: float = 4, **kwargs: Any) -> IB:
        ensure_loop()
        ib = IB()
        clients.append(ib)
        ib.connect("127.0.0.1", port or gw.port, clientId=client_id, timeout=timeout, **kwargs)
        return ib

    yield _connect
    for ib in clients:
        ib.disconnect()


@pytest.fixture
def ib(connect: Callable[..., IB]) -> IB:
    return connect(1)


# -- raw sockets -------------------------------------------------------------------------------------------------
def frame(*fields: Any) -> bytes:
    payload = "".join(f"{f}\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


class Raw:
    """A bare TWS API client on a socket, for what ib_insync would never send."""

    def __init__(self, port: int, versions: str = "v157..176") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        text = versions.encode()
        self.sock.sendall(b"API\0" + struct.pack(">I", len(text)) + text)

    def send(self, *fields: Any) -> None:
        self.sock.sendall(frame(*fields))

    def recv(self, timeout: float = 5.0) -> list[str] | None:
        """The next message's fields, or None when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + size:
                    msg = self.buf[4 : 4 + size].decode()
                    self.buf = self.buf[4 + size :]
                    return msg.split("\0")[:-1]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the server")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data

    def until(self, predicate: Callable[[list[str]], bool], timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                raise ConnectionError("closed by the server")
            if predicate(msg):
                return msg

    def start(self, client_id: int) -> list[str]:
        """Handshake + startApi; returns the handshake reply."""
        hello = self.recv()
        assert hello is not None
        self.send(71, 2, client_id, "")
        self.until(lambda m: m[0] == "9")
        return hello

    def closed(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                if self.recv(timeout) is None:
                    return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(gw: ThreadedGateway) -> Iterator[Callable[..., Raw]]:
    made: list[Raw] = []

    def _raw(versions: str = "v157..176") -> Raw:
        r = Raw(gw.port, versions)
        made.append(r)
        return r

    yield _raw
    for r in made:
        r.close()


@contextlib.contextmanager
def ibsim_cli(
    *args: str, cwd: Path, stderr: int = subprocess.DEVNULL
) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """`python -m ibsim --port 0 ARGS` as a child process: yields it, the port it listens on and its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibsim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("ibsim listening on 127.0.0.1:"), line
        yield proc, int(line.split(":")[1].split()[0]), line
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
