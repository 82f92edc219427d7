"""The supervisor with real child processes (short `python -c` scripts): restarts, giving up, stopping, watchdog."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from launcher import EXIT_CHILD_FAILED, EXIT_CONFIG, EXIT_OK, EXIT_UNHEALTHY
from launcher.supervisor import ChildSpec, Supervisor, Watchdog

from tests.support import wait_for

PY = sys.executable

# Appends "start" to a file, then runs until SIGTERM, which it records as "term" before exiting 0.
LONG_RUNNING = """
import signal, sys, time
log = open(sys.argv[1], "a")
log.write("start\\n"); log.flush()
def term(*_):
    log.write("term %f\\n" % time.monotonic()); log.flush(); sys.exit(0)
signal.signal(signal.SIGTERM, term)
while True:
    time.sleep(0.05)
"""

# Appends "start" and exits at once with the given code.
EXITS = """
import sys
open(sys.argv[1], "a").write("start\\n")
sys.exit(int(sys.argv[2]))
"""

IGNORES_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "a").write("start\\n")
while True:
    time.sleep(0.05)
"""


def lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def fast(name: str, script: str, *args: str, **kw) -> ChildSpec:
    return ChildSpec(name, [PY, "-c", script, *args], backoff_initial=0.05, backoff_max=0.1, stop_timeout=5, **kw)


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    thread.start()
    return thread, result


def test_a_dying_child_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    steady, flaky = tmp_path / "steady", tmp_path / "flaky"
    sup = Supervisor(
        [fast("steady", LONG_RUNNING, str(steady)), fast("flaky", EXITS, str(flaky), "1", max_restarts=100)],
        poll_interval=0.02,
    )
    thread, result = run_in_thread(sup)
    wait_for(lambda: len(lines(flaky)) >= 3)
    sup.request_stop()
    thread.join(10)
    assert result == [EXIT_OK]
    assert lines(steady) == ["start", lines(steady)[1]]  # started once, stopped once
    assert lines(steady)[1].startswith("term")


def test_a_child_that_keeps_dying_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    flaky, steady = tmp_path / "flaky", tmp_path / "steady"
    sup = Supervisor(
        [fast("steady", LONG_RUNNING, str(steady)), fast("gateway", EXITS, str(flaky), "1", max_restarts=3)],
        poll_interval=0.02,
    )
    assert sup.run() == EXIT_CHILD_FAILED  # returns at all: it gave up (a supervisor that never did would hang)
    assert len(lines(flaky)) == 4  # the first start and three restarts
    assert lines(steady)[-1].startswith("term")  # the survivors are stopped on the way out


def test_restarts_outside_the_window_are_forgiven(tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    sup = Supervisor([fast("flaky", EXITS, str(flaky), "1", max_restarts=1, window=0.01)], poll_interval=0.02)
    thread, result = run_in_thread(sup)
    wait_for(lambda: len(lines(flaky)) >= 5)
    sup.request_stop()
    thread.join(10)
    assert result == [EXIT_OK]


def test_a_configuration_error_exit_code_is_not_retried(tmp_path: Path) -> None:
    consumer = tmp_path / "consumer"
    spec = fast("consumer", EXITS, str(consumer), "2", exit_codes_fatal={2: EXIT_CONFIG})
    assert Supervisor([spec], poll_interval=0.02).run() == EXIT_CONFIG
    assert lines(consumer) == ["start"]


def test_stop_goes_in_reverse_order(tmp_path: Path) -> None:
    logs = {name: tmp_path / name for name in ("xvfb", "gateway", "consumer")}
    sup = Supervisor([fast(n, LONG_RUNNING, str(p)) for n, p in logs.items()], poll_interval=0.02)
    thread, result = run_in_thread(sup)
    wait_for(lambda: all(lines(p) for p in logs.values()))
    sup.request_stop()
    thread.join(10)
    assert result == [EXIT_OK]
    stopped = {name: float(lines(p)[-1].split()[1]) for name, p in logs.items()}
    assert stopped["consumer"] <= stopped["gateway"] <= stopped["xvfb"]


def test_a_child_that_ignores_sigterm_is_killed_after_its_timeout(tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn"
    spec = ChildSpec("stubborn", [PY, "-c", IGNORES_TERM, str(stubborn)], stop_timeout=0.5)
    sup = Supervisor([spec], poll_interval=0.02)
    thread, result = run_in_thread(sup)
    wait_for(lambda: lines(stubborn) == ["start"])
    pid = sup.pids()["stubborn"]
    assert pid is not None
    started = time.monotonic()
    sup.request_stop()
    thread.join(10)
    assert result == [EXIT_OK]
    assert time.monotonic() - started > 0.4  # it waited the child's stop_timeout before killing it


def test_the_watchdog_tries_a_soft_restart_then_gives_up(tmp_path: Path) -> None:
    soft: list[float] = []
    wd = Watchdog(
        probe=lambda: False, interval=0.02, soft_after=0.1, exit_after=0.4, soft_action=lambda: soft.append(1)
    )
    sup = Supervisor([fast("steady", LONG_RUNNING, str(tmp_path / "s"))], watchdog=wd, poll_interval=0.02)
    assert sup.run() == EXIT_UNHEALTHY
    assert soft == [1]


def test_the_watchdog_forgives_a_nightly_restart(tmp_path: Path) -> None:
    probes = iter([True, False, False, True] + [True] * 10_000)
    soft: list[int] = []
    wd = Watchdog(
        probe=lambda: next(probes), interval=0.02, soft_after=1, exit_after=2, soft_action=lambda: soft.append(1)
    )
    sup = Supervisor([fast("steady", LONG_RUNNING, str(tmp_path / "s"))], watchdog=wd, poll_interval=0.02)
    thread, result = run_in_thread(sup)
    time.sleep(0.5)
    sup.request_stop()
    thread.join(10)
    assert result == [EXIT_OK]
    assert soft == []


def test_a_raising_probe_counts_as_unhealthy(tmp_path: Path) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    wd = Watchdog(probe=broken, interval=0.02, soft_after=10, exit_after=0.2)
    sup = Supervisor([fast("steady", LONG_RUNNING, str(tmp_path / "s"))], watchdog=wd, poll_interval=0.02)
    assert sup.run() == EXIT_UNHEALTHY
