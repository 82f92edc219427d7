"""Shared fixtures: the real emulators (once per session), the simulated gateway, and the consumer.

Isolation comes from a fresh Google Cloud project id per test: both emulators keep projects apart, so tests never
see each other's topics or documents, and never collide with a running `make run` (which uses fixed ports).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from consumer.logs import configure
from devstack.emulators import EmulatorPair, ToolMissing, require_tools
from tests.shared_emulators import SHARED_EMULATORS_DIR, attach_shared, emulator_environ, stop_shared
from tests.support import DEFAULT_CLOCK, Bus, ConsumerUnderTest, ensure_loop, provision_for_tests, write_config

# structlog through the standard library from the first line on, so pytest's caplog sees the consumer's logs.
configure("console", "INFO")

# Property tests: `full` (make test, CI, the default) draws 400 examples per property; `check` (make check's fast
# loop, HYPOTHESIS_PROFILE=check) draws 100, so the loop stays quick and every property still runs. No deadline: the
# properties assert behaviour, and an example that happens to run while the machine is busy is not a failure.
settings.register_profile("full", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("check", parent=settings.get_profile("full"), max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "full"))


@pytest.fixture(autouse=True)
def main_thread_event_loop(request: pytest.FixtureRequest) -> None:
    """ib_insync's blocking API asks for the thread's current event loop; an async test run before this one leaves
    the main thread without one, so a test that connects a client of its own would fail depending on the order."""
    if not inspect.iscoroutinefunction(request.function):
        ensure_loop()


def pytest_configure(config: pytest.Config) -> None:
    """On the xdist controller: a directory where the workers meet to share one pair of emulators (each test has
    its own project, so tests never see each other's topics or documents); stopped in pytest_unconfigure."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    shared = os.environ[SHARED_EMULATORS_DIR] = tempfile.mkdtemp(prefix="tests-emulators-")
    if "not emulators" not in (config.option.markexpr or ""):
        # Started now, while the workers start and collect, instead of by the first test that needs them (its
        # workers waited ~10 s). A failure here is left to that test, which starts them itself (attach_shared).
        starting = threading.Thread(target=_start_shared, args=(Path(shared),), name="shared-emulators", daemon=True)
        starting.start()
        config.stash[_EARLY_START] = starting


_EARLY_START = pytest.StashKey[threading.Thread]()


def _start_shared(directory: Path) -> None:
    with contextlib.suppress(Exception):
        attach_shared(directory)


def pytest_unconfigure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    shared = os.environ.pop(SHARED_EMULATORS_DIR, None)
    if shared:
        if _EARLY_START in config.stash:
            config.stash[_EARLY_START].join(120)  # a run that ended at once: its pair is recorded before it is stopped
        stop_shared(Path(shared))
        shutil.rmtree(shared, ignore_errors=True)


# Fixtures that start a whole `make run` stack (tests/service/test_operator*.py): the tests using one run on one
# worker (`--dist loadgroup`), so the stack starts once; the module's other tests go wherever there is room.
STACK_FIXTURES = ("stack", "household")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test that needs the emulators (through any fixture), so `make check` can leave them out, groups
    the tests sharing a stack fixture, and puts the slow ones first."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "emulators" in names:
            item.add_marker(pytest.mark.emulators)
        for fixture in STACK_FIXTURES:
            if fixture in names:
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{fixture}"))  # type: ignore[attr-defined]
    # The slow tests first, longest first: handed out early, they run beside the many short ones instead of
    # trailing at the end while the other workers sit idle (equal estimates keep the order as written).
    items.sort(key=lambda item: -expected_seconds(item))


def expected_seconds(item: pytest.Item) -> float:
    """`@pytest.mark.slow(seconds=N)`: about how long the test takes in `make test`; `slow` alone, 10."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("seconds", 10))


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorPair]:
    """The session's emulators: shared by every xdist worker when the suite runs on several (started by the first
    worker that needs them, stopped by the controller), else started and stopped here."""
    try:
        require_tools()
    except ToolMissing as e:
        pytest.exit(str(e), returncode=3)
    shared = os.environ.get(SHARED_EMULATORS_DIR)
    if shared:
        pair = attach_shared(Path(shared))
        with emulator_environ(pair):
            yield pair
        return
    with EmulatorPair(workdir=tmp_path_factory.mktemp("emulators"), lean=True) as pair, emulator_environ(pair):
        yield pair


@pytest.fixture
def project(emulators: EmulatorPair) -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bus(project: str) -> Iterator[Bus]:
    provision_for_tests(project)
    with Bus(project) as b:
        yield b


@pytest.fixture
def paper_config_overrides() -> dict[str, object]:
    """Fields of this test's paper config beyond tests/support.py trading_config (override it in a module)."""
    return {}


@pytest.fixture
def paper_config(project: str, paper_config_overrides: dict[str, object]) -> dict[str, object]:
    """The paper config in Firestore, trading on; a module uses it with pytest.mark.usefixtures("paper_config")."""
    return write_config(project, **paper_config_overrides)


@pytest.fixture
def market_clock(request: pytest.FixtureRequest) -> str:
    """When the simulated gateway's clock starts; parametrize it (indirect) to run a test on other days."""
    return getattr(request, "param", DEFAULT_CLOCK)


@pytest.fixture
def gateway_scenario() -> dict[str, object]:
    """Scenario fields for this test's simulated gateway beyond the built-in ones (override it in a module)."""
    return {}


@pytest.fixture
def gateway(market_clock: str, gateway_scenario: dict[str, object]) -> Iterator[object]:
    from ibsim import Scenario, ThreadedGateway

    scenario = Scenario.from_dict({**gateway_scenario, "clock": {"start": market_clock}})
    with ThreadedGateway(port=0, scenario=scenario) as gw:
        yield gw


@pytest.fixture
def manual(gateway: object) -> Iterator[object]:
    """Another API client of the same login (client id 7), as TWS or another program would be: an ib_insync IB."""
    from ib_insync import IB

    ensure_loop()
    ib = IB()
    ib.connect("127.0.0.1", gateway.port, clientId=7, timeout=5)  # type: ignore[attr-defined]
    yield ib
    ib.disconnect()


@pytest.fixture
def consumer_factory(project: str, bus: Bus, gateway: object, tmp_path: Path) -> Iterator[type]:
    """Starts in-process consumers against this test's project and gateway; stops them at teardown."""
    started: list[ConsumerUnderTest] = []

    def start(**overrides: object) -> ConsumerUnderTest:
        c = ConsumerUnderTest.start(project=project, gateway_port=gateway.port, **overrides)  # type: ignore[attr-defined]
        started.append(c)
        return c

    yield start  # type: ignore[misc]
    for c in started:
        c.stop()


@pytest.fixture
def consumer(consumer_factory: type) -> ConsumerUnderTest:
    return consumer_factory()  # type: ignore[call-arg]
