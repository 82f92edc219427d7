"""A stop signal always stops the programs that wait for one (`make run`, `consumer replies --follow`).

`make run` ignored a SIGTERM to its process group about one time in three and kept the whole stack up: make passes
the SIGTERM on to its child, which so gets it twice within microseconds, and the second handler call deadlocked on
the Event the first was setting. Here a small program waits the way they do, under make, and its group is sent
SIGTERM as `kill -TERM -<pgid>` (or a CI runner's timeout) would; the old handler hung in about one round in six.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

WAITER = textwrap.dedent(
    """
    import signal, sys
    from consumer.stop_signals import stop_event

    stop = stop_event((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    print("waiting", flush=True)
    while not stop.wait(1.0):  # as devstack's main loop waits
        pass
    print("stopped", flush=True)
    """
)


@pytest.fixture
def makefile(tmp_path: Path) -> Path:
    (tmp_path / "waiter.py").write_text(WAITER)
    (tmp_path / "Makefile").write_text(f"run:\n\t@{sys.executable} {tmp_path / 'waiter.py'}\n")
    return tmp_path


def start_waiter(makefile: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        ["make", "--no-print-directory", "-s", "-C", str(makefile), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline() == "waiting\n"
    return process


def test_a_sigterm_to_the_process_group_stops_the_waiter_under_make_every_time(makefile: Path):
    for round_ in range(20):
        process = start_waiter(makefile)
        os.killpg(process.pid, signal.SIGTERM)  # to make and the waiter; make passes it on to the waiter again
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"round {round_}: the waiter ignored SIGTERM (deadlocked in its signal handler)")
        assert process.stdout is not None
        assert process.stdout.read() == "stopped\n", f"round {round_}"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_and_a_closed_terminal_stop_it_too(makefile: Path, signum: signal.Signals):
    process = start_waiter(makefile)
    os.killpg(process.pid, signum)
    try:
        process.wait(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.stdout is not None
    assert process.stdout.read() == "stopped\n"
