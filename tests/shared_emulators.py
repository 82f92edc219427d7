"""One pair of emulators for every xdist worker of a test run.

Starting a pair costs two JVMs (seconds of both cores); four workers starting four pairs at once slowed every test
behind them. Tests are isolated by project id, so sharing is safe. The controller (tests/conftest.py) makes a
directory and names it in SHARED_EMULATORS_DIR; the first worker that needs emulators starts them under a file lock
and writes their addresses and process groups there; the others attach; the controller stops them at the end.
A test that freezes or kills an emulator starts its own pair (`private_emulators`) instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from devstack.emulators import EmulatorPair, http_ok

SHARED_EMULATORS_DIR = "TESTS_SHARED_EMULATORS_DIR"
_STATE = "emulators.json"


def attach_shared(directory: Path) -> EmulatorPair:
    """The run's pair, started here if no worker has yet (or if the recorded one no longer answers)."""
    with (directory / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state_path = directory / _STATE
        if state_path.exists():
            state = json.loads(state_path.read_text())
            pair = EmulatorPair(state["pubsub"], state["firestore"], workdir=directory / "pair")
            if all(http_ok(f"http://{address}/") for address in (state["pubsub"], state["firestore"])):
                return pair
        # Stopped by stop_shared, not by this worker.
        pair = EmulatorPair(workdir=directory / "pair", lean=True).__enter__()
        groups = [os.getpgid(e.process.pid) for e in (pair.pubsub, pair.firestore) if e.process is not None]
        state = {"pubsub": pair.pubsub.address, "firestore": pair.firestore.address, "groups": groups}
        state_path.write_text(json.dumps(state))
        return pair


def stop_shared(directory: Path, timeout: float = 10.0) -> None:
    """Ends the process groups a worker started (the gcloud wrapper and its Java child each)."""
    state_path = directory / _STATE
    if not state_path.exists():
        return
    groups = json.loads(state_path.read_text())["groups"]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(g) for g in groups):
            time.sleep(0.1)


def _alive(group: int) -> bool:
    """A process of the group that is not a zombie (an orphan's zombie waits for init, which may never reap it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                return True
    return False


@contextlib.contextmanager
def emulator_environ(pair: EmulatorPair) -> Iterator[EmulatorPair]:
    """PUBSUB_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST pointing at this pair while in the block, restored after."""
    saved = {k: os.environ.get(k) for k in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST")}
    os.environ.update(pair.environ())
    try:
        yield pair
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def private_emulators(workdir: Path) -> Iterator[EmulatorPair]:
    """A pair of this test's own, in the environment while it runs: for a test that freezes or kills one."""
    with EmulatorPair(workdir=workdir, lean=True) as pair, emulator_environ(pair):
        yield pair
