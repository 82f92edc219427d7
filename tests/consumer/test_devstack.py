"""The local stack's set-up: addresses from the standard variables, a one-line hint when a tool is missing, and the
simulated clock `make run` chooses for the real time."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from devstack.local import DEFAULTS, LocalAddresses, demo_clock

ET = ZoneInfo("America/New_York")


def test_defaults_and_overrides_come_from_the_standard_variables():
    defaults = LocalAddresses.from_env({})
    assert (defaults.pubsub, defaults.firestore, defaults.ib_port) == (
        DEFAULTS["PUBSUB_EMULATOR_HOST"], DEFAULTS["FIRESTORE_EMULATOR_HOST"], 4002,
    )  # fmt: skip
    mine = LocalAddresses.from_env({"PUBSUB_EMULATOR_HOST": "127.0.0.1:9999", "IB_PORT": "4100"})
    assert mine.pubsub == "127.0.0.1:9999"
    assert mine.ib_port == 4100
    assert mine.environ()["IB_PORT"] == "4100"


def test_a_bad_address_is_named():
    with pytest.raises(SystemExit, match="PUBSUB_EMULATOR_HOST"):
        LocalAddresses.from_env({"PUBSUB_EMULATOR_HOST": "nowhere"})
    with pytest.raises(SystemExit, match="IB_PORT"):
        LocalAddresses.from_env({"IB_PORT": "x"})


@pytest.mark.parametrize(("missing", "hint"), [("gcloud", "google-cloud-cli"), ("java", "openjdk")])
def test_a_missing_tool_is_one_line_saying_what_to_install(tmp_path, missing, hint):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in {"gcloud", "java"} - {missing}:
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "devstack", "preflight"],
        env={**os.environ, "PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{missing} not found")
    assert hint in lines[0]


@pytest.mark.parametrize(
    ("now", "clock"),
    [
        pytest.param(dt.datetime(2026, 6, 17, 10, 0, tzinfo=ET), None, id="wednesday-10:00-open"),
        pytest.param(dt.datetime(2026, 6, 17, 20, 0, tzinfo=ET), "2026-06-18T09:30:00-04:00", id="wednesday-20:00"),
        pytest.param(dt.datetime(2026, 6, 17, 2, 0, tzinfo=dt.UTC), "2026-06-17T09:30:00-04:00", id="before-open-utc"),
        pytest.param(dt.datetime(2026, 12, 5, 12, 0, tzinfo=ET), "2026-12-07T09:30:00-05:00", id="saturday"),
        pytest.param(dt.datetime(2026, 11, 26, 11, 0, tzinfo=ET), "2026-11-27T09:30:00-05:00", id="thanksgiving"),
        pytest.param(dt.datetime(2026, 11, 27, 14, 0, tzinfo=ET), "2026-11-30T09:30:00-05:00", id="after-early-close"),
        pytest.param(dt.datetime(2026, 6, 17, 15, 55, tzinfo=ET), "2026-06-18T09:30:00-04:00", id="closing-in-5-min"),
    ],
)
def test_make_run_starts_the_gateway_clock_at_the_next_regular_open_when_nyse_is_closed(
    now: dt.datetime, clock: str | None
) -> None:
    assert demo_clock(now) == clock


def test_accounts_selects_logins_each_on_its_own_ports_and_subscription():
    """`make run ACCOUNTS=household`: two logins, the second managing two accounts; the first is the default."""
    addresses = LocalAddresses.from_env({"ACCOUNTS": "household", "IB_PORT": "4100", "HEALTH_PORT": "8100"})
    solo, household = addresses.deployments()
    assert (solo.login.ids, solo.ib_port, solo.health_port, solo.subscription, solo.default) == (
        ("DU111111",), 4100, 8100, "intents-consumer", True,
    )  # fmt: skip
    assert (household.login.ids, household.ib_port, household.health_port, household.subscription) == (
        ("DU222222", "DU333333"), 4101, 8110, "intents-consumer-2",
    )  # fmt: skip
    assert not household.default
    assert household.login.named() == "DU222222 (parent), DU333333 (child)"
    env = addresses.consumer_environ(household, Path("/x/accounts.yaml"))
    assert (env["IB_ACCOUNTS"], env["IB_ACCOUNT"], env["DEFAULT_DEPLOYMENT"], env["IB_PORT"], env["HEALTH_PORT"]) == (
        "DU222222,DU333333", "", "no", "4101", "8110",
    )  # fmt: skip
    assert (env["INTENTS_SUBSCRIPTION"], env["ACCOUNTS_FILE"]) == ("intents-consumer-2", "/x/accounts.yaml")
    ports = [port for _, _, port in addresses.listeners()]
    assert {4100, 8100, 4101, 8110} <= set(ports)  # what check_free and `make stop` look at

    single = LocalAddresses.from_env({})
    (only,) = single.deployments()
    assert (only.login.ids, only.suffix, only.log_stem("consumer")) == (("DU123456",), "", "consumer")
    assert single.consumer_environ(only, None) == single.environ()
    assert len(single.listeners()) == 4


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("DU1:DU1", "DU1 is named twice"),
        ("DU1=a:DU2=a", "a is named twice"),
        ("DU1=DU2:DU2", "DU2 is named twice"),
        ("DU1:", "'' is not an account id"),
        ("DU 1", "'DU 1' is not an account id"),
    ],
)
def test_a_bad_accounts_layout_is_named(value: str, problem: str):
    with pytest.raises(SystemExit, match=f"ACCOUNTS='{re.escape(value)}': {re.escape(problem)}"):
        LocalAddresses.from_env({"ACCOUNTS": value})


def test_overlapping_ports_are_refused_before_anything_starts():
    # The second login's consumer would listen on HEALTH_PORT+10: here, Firestore's port.
    with pytest.raises(SystemExit, match="overlap"):
        LocalAddresses.from_env({"ACCOUNTS": "household", "HEALTH_PORT": "8071"})


def test_make_stop_ends_only_the_groups_it_started_not_a_later_holder_of_a_recorded_number(tmp_path):
    """pids wrap (at 32,768 here) while a suite starts thousands of processes: a stack file left by a killed runner
    may name a group number that now belongs to someone else, or to the one calling `make stop`."""
    from consumer.local_stack import StackFile, start_ticks
    from devstack.local import stop_stack

    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    impostor = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        StackFile(tmp_path).write({"gateway": ours.pid, "consumer": impostor.pid, "shell": os.getpgrp()}, [])
        record = StackFile(tmp_path).read()
        assert record is not None
        assert record["started"]["gateway"] == start_ticks(ours.pid)
        # The consumer's recorded leader started at another time: its number was given to a new process since.
        record["started"]["consumer"] -= 1
        (tmp_path / "stack.json").write_text(json.dumps(record))

        reaper = threading.Thread(target=ours.wait)  # as init would: a zombie still counts as a group member
        reaper.start()
        said = stop_stack({"DEVSTACK_DIR": str(tmp_path)})
        reaper.join(15)

        assert ours.returncode == -signal.SIGTERM
        assert impostor.poll() is None  # not ours any more: left alone
        assert said == "ended what an earlier run left behind: gateway"
        assert not (tmp_path / "stack.json").exists()
    finally:
        for process in (ours, impostor):
            process.kill()
            process.wait()
