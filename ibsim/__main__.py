"""`python -m ibsim`: run the simulated gateway until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .scenario import Scenario, ScenarioError
from .server import GatewayServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ibsim", description="Simulated IB Gateway speaking the TWS API socket protocol.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=4002, help="TCP port (default 4002, the IB Gateway paper port; 0 = any)")
    p.add_argument("--scenario", help="scenario file (YAML or JSON); default: the built-in scenario")
    p.add_argument("--state", help="JSON file keeping orders, executions, positions and cash across restarts")
    p.add_argument(
        "--clock",
        help="start the simulated clock at this ISO 8601 instant, e.g. 2026-11-25T10:00:00-05:00 (default: wall clock)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    scenario = Scenario.load(args.scenario) if args.scenario else Scenario.default()
    if args.clock:  # rebuilt, since the clock decides dates in the scenario too (the front futures expiry)
        name = scenario.name
        scenario = Scenario.from_dict({**scenario.raw, "clock": {"start": args.clock}})
        scenario.name = name
    server = GatewayServer(scenario, args.host, args.port, state_file=args.state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except OSError as e:
        print(f"ibsim: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    accounts = ",".join(a.id for a in scenario.accounts)
    print(f"ibsim listening on {args.host}:{server.port} (scenario: {scenario.name}, account {accounts})", flush=True)
    await stop.wait()
    logging.getLogger("ibsim").info("stopping")
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(serve(args))
    except ScenarioError as e:
        print(f"ibsim: invalid scenario: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
