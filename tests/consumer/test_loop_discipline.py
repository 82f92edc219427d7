"""The lesson of the HTTP version, as checks: one loop owns ib_insync, and nothing papers over loop conflicts.

The earlier service crashed with `RuntimeError: ... attached to a different loop` (ib_insync created on one loop,
used on another) and worked around it with patchAsyncio, asyncio.run per request and sleeps. None of that may
come back: the runtime half of this check is in tests/service/test_service.py (the IB socket's loop).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "consumer"
# The service's own code; the CLI runs outside the broker loop and may block as it likes (devstack/ is not in here).
SERVICE_CODE = [p for p in ROOT.rglob("*.py") if p.name != "cli.py"]

# broker/loop.py owns the loop: it alone runs it (and, at shutdown, drains it).
LOOP_OWNER = "loop.py"

FORBIDDEN = {
    r"patchAsyncio|nest_asyncio": "no patching of asyncio: one loop owns ib_insync",
    r"asyncio\.run\(|util\.run\(|\.run_until_complete\(": "no loop per request: hand work to the broker loop",
    r"time\.sleep\(|ib\.sleep\(|\bsleep\(2\)": "no sleeping for a broker state: wait on ib_insync's events",
    r"get_event_loop\(\)": "no implicit loop lookup: the broker loop is passed or running",
}


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_service_code_has_no(pattern: str):
    hits = [
        f"{p.relative_to(ROOT.parent)}:{n}: {line.strip()}"
        for p in SERVICE_CODE
        if not (p.name == LOOP_OWNER and "run_until_complete" in pattern)
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]
    assert not hits, f"{FORBIDDEN[pattern]}:\n" + "\n".join(hits)


def test_ib_is_created_only_in_the_gateway_module():
    creators = [p.name for p in SERVICE_CODE if re.search(r"\bIB\(\)", p.read_text())]
    assert creators == ["gateway.py"]


# The one door to the broker: consumer/broker/ speaks to IB; everything else asks its Broker (consumer.broker.broker).
BROKER_PACKAGE = ROOT / "broker"
OUTSIDE_THE_DOOR = [p for p in ROOT.rglob("*.py") if BROKER_PACKAGE not in p.parents]
THROUGH_THE_WALL = {
    r"^\s*(from|import)\s+ib_insync\b|(__import__|import_module)\(\s*['\"]ib_insync": "imports ib_insync",
    r"\.ib\b|\bIB\(|\bib\s*=|\.require\(\)": "touches the IB object",
    r"\.requests\.(positions|open_orders|completed_orders|executions|current_time)\(": "asks the gateway directly",
}


@pytest.mark.parametrize("pattern", THROUGH_THE_WALL)
def test_only_the_broker_package_speaks_to_ib(pattern: str):
    hits = [
        f"{p.relative_to(ROOT.parent)}:{n}: {line.strip()}"
        for p in OUTSIDE_THE_DOOR
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]
    assert not hits, (
        f"outside consumer/broker/, code {THROUGH_THE_WALL[pattern]}; use the Broker instead:\n" + "\n".join(hits)
    )


def test_the_door_check_sees_what_it_forbids():
    """The patterns catch the forms the old code used (a check that cannot fail is no check)."""
    old_forms = [
        "from ib_insync import Fill, Trade",
        "    import ib_insync  # noqa: F401",
        "    ib = ctx.ib",
        "        own = self.ctx.ib.client.clientId",
        "        at_broker = await find_orders(services.gateway.require(), refs)",
        "        reported = await self._gateway.requests.executions()",
    ]
    for line in old_forms:
        assert any(re.search(p, line) for p in THROUGH_THE_WALL), line
    assert not any(re.search(p, "    broker = ctx.broker") for p in THROUGH_THE_WALL)
