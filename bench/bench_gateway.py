"""The simulated gateway alone: start-up, ib_insync connect, and placeOrder -> Filled round trips.

Run it with `python -m bench.bench_gateway`.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ib_insync import IB, MarketOrder, Stock

from bench.stack import BENCH_CLOCK
from ibsim import Scenario, ThreadedGateway

ROOT = Path(__file__).resolve().parents[1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def cli_start_to_listening() -> float:
    """`python -m ibsim` from exec to its 'listening' line (interpreter start included)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibsim", "--port", "0", "--log-level", "WARNING", "--clock", BENCH_CLOCK],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        if "listening" not in line:
            raise RuntimeError(f"ibsim did not start: {line!r}")
        return elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def run(connects: int = 20, orders: int = 50) -> dict:
    t0 = time.perf_counter()
    gw = ThreadedGateway(port=0, scenario=Scenario.from_dict({"clock": {"start": BENCH_CLOCK}}))
    start = time.perf_counter() - t0
    try:
        connect_times = []
        for i in range(connects):
            ib = IB()
            t0 = time.perf_counter()
            ib.connect("127.0.0.1", gw.port, clientId=100 + i, timeout=4)
            connect_times.append(time.perf_counter() - t0)
            ib.disconnect()

        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, timeout=4)
        [spy] = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))
        round_trips: list[float] = []

        async def place_all() -> None:
            for i in range(orders):
                filled = asyncio.Event()
                t0 = time.perf_counter()
                trade = ib.placeOrder(spy, MarketOrder("BUY" if i % 2 == 0 else "SELL", 10))
                # subscribed before the loop runs again, so the fill cannot slip past (ib.waitOnUpdate can miss it)
                trade.filledEvent += lambda _trade, ev=filled: ev.set()
                await asyncio.wait_for(filled.wait(), 5)
                round_trips.append(time.perf_counter() - t0)

        ib.run(place_all())
        ib.disconnect()
        violations = gw.pacing_violations()
    finally:
        gw.stop()
    return {
        "server_start_to_listening_ms": _ms(start),
        "cli_start_to_listening_ms": _ms(cli_start_to_listening()),
        "connect_median_ms": _ms(statistics.median(connect_times)),
        "connect_max_ms": _ms(max(connect_times)),
        "order_round_trip_median_ms": _ms(statistics.median(round_trips)),
        "order_round_trip_p95_ms": _ms(sorted(round_trips)[int(len(round_trips) * 0.95) - 1]),
        "connects": connects,
        "orders": orders,
        "pacing_violations": violations,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
