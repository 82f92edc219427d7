"""The local stack the benchmark runs against: emulators and gateway on free ports, the consumer as a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.cloud import firestore

from consumer.store.layout import config_path, mode_path
from devstack.emulators import EmulatorPair, free_port, http_ok, require_tools
from devstack.provision import Topology, provision

if TYPE_CHECKING:
    from ibsim import Scenario

OURS = "bench-ours"
INSTRUMENTS = 1000
# ibsim/scenarios/paper.yaml: IB's 50 messages/s (the socket closes at the 100th message over) and a start-up
# download that grows with the account, here seeded to a paper account's typical size (SEED).
PACING = {"maxPerSecond": 50, "disconnectAfter": 100, "currentTimeSeconds": 1}
CONNECT_COST = {"baseMs": 300, "perPositionMs": 2, "perOpenOrderMs": 5, "perCompletedOrderMs": 20, "perExecutionMs": 2}
SEED = {"positions": 50, "openOrders": 20, "completedOrders": 500, "executions": 200}
# ib_insync's connect timeout is per start-up request; at 20 ms per completed order, 500 of them take 10 s.
CONNECT_TIMEOUT = 60.0
SEED_CLIENT_ID = 70
# A Wednesday in NYSE's session: the simulated gateway keeps exchange hours, and the bench must run alike at any hour.
BENCH_CLOCK = "2026-06-17T10:00:00-04:00"


def bench_scenario() -> Scenario:
    """The gateway the bench measures against: IB's pacing and start-up costs, the bench's instruments, a clock in
    session."""
    from ibsim import Scenario

    return Scenario.from_dict(
        {
            "generated": {"count": INSTRUMENTS},
            "pacing": PACING,
            "connectCost": CONNECT_COST,
            "clock": {"start": BENCH_CLOCK},
        }
    )


def seed_account(gateway: Any) -> dict[str, int]:
    """Positions set at the gateway; fills, completed and open orders made by another client id, as a person
    trading in TWS beside the consumer would: 100 round trips (200 executions, flat), 300 limit orders cancelled
    (with the 200 filled, 500 completed orders) and 20 limit orders left working far from the market."""
    import asyncio

    from ib_insync import IB, LimitOrder, MarketOrder, Stock

    # Away from the instruments the rebalances trade (SYM000...), so those start flat in the books too.
    symbols = [f"SYM{n:03d}" for n in range(INSTRUMENTS - 200, INSTRUMENTS)]
    for symbol in symbols[: SEED["positions"]]:
        gateway.set_position(symbol, 10)

    async def trade() -> None:
        ib = IB()
        await ib.connectAsync("127.0.0.1", gateway.port, clientId=SEED_CLIENT_ID, timeout=CONNECT_TIMEOUT)
        try:
            contracts = await ib.qualifyContractsAsync(*(Stock(s, "SMART", "USD") for s in symbols[50:150]))
            round_trips = SEED["executions"] // 2
            filled = [
                ib.placeOrder(c, MarketOrder(side, 1)) for side in ("BUY", "SELL") for c in contracts[:round_trips]
            ]
            cancels = SEED["completedOrders"] - len(filled)
            resting = [
                ib.placeOrder(contracts[n % len(contracts)], LimitOrder("BUY", 1, 0.01))
                for n in range(cancels + SEED["openOrders"])
            ]
            while not all(t.isDone() for t in filled) or any(t.orderStatus.status != "Submitted" for t in resting):
                await asyncio.wait_for(ib.updateEvent, 30)
            for t in resting[:cancels]:
                ib.cancelOrder(t.order)
            while not all(t.isDone() for t in resting[:cancels]):
                await asyncio.wait_for(ib.updateEvent, 30)
        finally:
            ib.disconnect()

    asyncio.run(trade())
    working = sum(1 for o in gateway.orders() if o.get("status") not in ("Filled", "Cancelled"))
    return {"positions": len([q for q in gateway.positions().values() if q]), "openOrders": working,
            "completedOrders": len(gateway.orders()) - working, "executions": len(gateway.executions())}  # fmt: skip


BENCH_ACCOUNT = "DU123456"  # the default ibsim scenario's account


class BenchStack(contextlib.AbstractContextManager["BenchStack"]):
    def __init__(self, designs: list[str]) -> None:
        self.ours = OURS
        self._projects = {name: f"bench-{i}" for i, name in enumerate(designs)}
        self._stack = contextlib.ExitStack()
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.gateway: Any = None
        self.seeded: dict[str, int] = {}
        self._consumer: subprocess.Popen[bytes] | None = None
        self._restarts = 0

    def project_of(self, design: str) -> str:
        return self._projects[design]

    @property
    def consumer_pid(self) -> int:
        assert self._consumer is not None
        return self._consumer.pid

    def __enter__(self) -> BenchStack:
        from ibsim import ThreadedGateway

        require_tools()
        print("starting emulators and the simulated gateway ...", flush=True)
        emulators = self._stack.enter_context(EmulatorPair(workdir=self._tmp))
        os.environ.update(emulators.environ())
        self.gateway = self._stack.enter_context(ThreadedGateway(port=0, scenario=bench_scenario()))
        print("seeding the account to a paper account's size (positions, open, completed orders, fills) ...")
        self.seeded = seed_account(self.gateway)
        print(f"  {self.seeded}", flush=True)
        for project in (self.ours, *self._projects.values()):
            provision(project)
        db = firestore.Client(project=self.ours)
        db.document(config_path(BENCH_ACCOUNT, "paper")).set(
            {"tradingEnabled": True, "leverageCap": 1.0,
             "exposure": {"overall": 1.0, "strategies": {"dummy": 1.0}}}
        )  # fmt: skip
        db.close()
        self._start_consumer()
        self._stack.callback(self._stop_consumer)
        return self

    def _start_consumer(self, subscription: str = "intents-consumer") -> None:
        health = free_port()
        log = (self._tmp / "consumer.log").open("ab")
        self._consumer = subprocess.Popen(
            [sys.executable, "-m", "consumer", "serve"],
            env={**os.environ, "GOOGLE_CLOUD_PROJECT": self.ours, "IB_PORT": str(self.gateway.port),
                 "IB_ACCOUNT": BENCH_ACCOUNT, "HEALTH_PORT": str(health), "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING",
                 "IB_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT), "INTENTS_SUBSCRIPTION": subscription},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not http_ok(f"http://127.0.0.1:{health}/readyz"):
            if self._consumer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the consumer did not get ready; see {self._tmp / 'consumer.log'}")
            time.sleep(0.1)
        print(f"consumer ready (pid {self._consumer.pid}); logs in {self._tmp}", flush=True)

    def restart_consumer(self) -> None:
        """A new consumer process: nothing in its memory, what it knows comes from Firestore and the gateway.

        It pulls from a subscription of its own, declared like intents-consumer: after a consumer stops, the emulator
        can hand messages to its closed stream for minutes (a 1,000-instrument rebalance once waited out the bench's
        600 s), which measures the emulator, not the consumer. Real Pub/Sub sees the stream close.
        """
        self._stop_consumer()
        self._restarts += 1
        name = f"intents-consumer-{self._restarts}"
        spec = Topology.load().subscriptions["intents-consumer"]
        provision(self.ours, Topology(topics={}, subscriptions={name: spec}))
        self._start_consumer(name)

    def wait_books_settled(self, timeout: float = 300.0) -> float:
        """Seconds until no order is left open in Firestore: live booking has caught up with every fill."""
        started = time.monotonic()
        db = firestore.Client(project=self.ours)
        try:
            open_orders = db.document(mode_path(BENCH_ACCOUNT, "paper")).collection("openOrders")
            while any(True for _ in open_orders.limit(1).stream()):
                if time.monotonic() - started > timeout:
                    raise RuntimeError("the books did not settle")
                time.sleep(0.2)
        finally:
            db.close()
        return round(time.monotonic() - started, 1)

    def _stop_consumer(self) -> None:
        if self._consumer is not None and self._consumer.poll() is None:
            self._consumer.terminate()
            self._consumer.wait(60)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
