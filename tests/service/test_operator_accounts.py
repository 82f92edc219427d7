"""`make run ACCOUNTS=household` (issue 18): two simulated gateways (DU111111 alone; DU222222 and DU333333 on one
login) and two consumers, each on its own subscription, run as a person runs them: a real `make run` process group
on free ports (the helpers of test_operator.py), its demo, the CLI from a second terminal, and `make stop`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.test_operator import (
    REPO,
    Stack,
    group_alive,
    kill_leftovers,
    leftovers,
    port_free,
    shell,
    start_stack,
    terminate,
)
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.emulators]

SOLO, PARENT, CHILD = "DU111111", "DU222222", "DU333333"
ALIASES = {SOLO: "solo", PARENT: "parent", CHILD: "child"}


# Session-scoped (one worker runs every test using it: tests/conftest.py STACK_FIXTURES), so the stack is not
# stopped and started again each time that worker runs another module's test in between.
@pytest.fixture(scope="session")
def household(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        tmp_path_factory.mktemp("household"), ["make", "--no-print-directory", "run", "ACCOUNTS=household"]
    )
    yield running
    terminate(running)


def demo_section(stack: Stack, title_start: str) -> str:
    return stack.text().split(f">>> {title_start}", 1)[1].split(">>>", 1)[0].split("Serving until Ctrl-C", 1)[0]


def publish(stack: Stack, args: str) -> dict[str, Any]:
    done = shell(stack, f"consumer publish {args} --wait --json")
    assert done.stdout, done.stderr
    reply: dict[str, Any] = json.loads(done.stdout)
    return reply


def test_the_banner_says_which_consumer_serves_which_accounts(household: Stack):
    health, ib = int(household.env["HEALTH_PORT"]), int(household.env["IB_PORT"])
    text = household.text()
    assert (
        f"consumer {SOLO} ready: serves {SOLO} (solo) on subscription intents-consumer, the default deployment "
        f"(http://127.0.0.1:{health}/readyz)"
    ) in text
    assert (
        f"consumer {PARENT} ready: serves {PARENT} (parent), {CHILD} (child) on subscription intents-consumer-2 "
        f"(http://127.0.0.1:{health + 10}/readyz)"
    ) in text
    assert f"simulated IB Gateway on 127.0.0.1:{ib + 1} (login with paper accounts {PARENT} (parent), {CHILD}" in text
    for account in (SOLO, PARENT, CHILD):
        assert f"seeded accounts/{account}/config/paper" in text
    # The second terminal's lines: each consumer's status on its own health port.
    assert f"HEALTH_PORT={health + 10} .venv/bin/consumer --account {PARENT} status" in text
    accounts = (household.workdir / "accounts.yaml").read_text()
    for account, alias in ALIASES.items():
        assert f"{account}:\n    aliases:\n    - {alias}" in accounts
    # Each login's gateway holds its own accounts, and only those.
    assert f"account {SOLO})" in (household.workdir / "gateway.log").read_text()
    assert f"account {PARENT},{CHILD})" in (household.workdir / f"gateway-{PARENT}.log").read_text()


def test_each_accounts_demo_reply_comes_from_that_account(household: Stack):
    for account, alias in ALIASES.items():
        section = demo_section(household, f"summary of {account} ")
        (line,) = [line for line in section.splitlines() if line.startswith("<<< ")]
        assert re.search(rf"summary\s+ok .* account {account}$", line), section
        # The default's account by its alias, the other login's by id (only ids route there); the reply names the id.
        assert f"account={alias if account == SOLO else account}" in section
    section = demo_section(household, "a summary addressed child")
    (line,) = [line for line in section.splitlines() if line.startswith("<<< ")]
    assert re.search(rf"error .* account {SOLO}$", line), section
    assert f"unknown_account: 'child' is an alias of {CHILD}, which another deployment serves" in section


def test_the_cli_reaches_each_account_through_its_own_consumer(household: Stack):
    for account, alias in ALIASES.items():
        reply = publish(household, f"summary --account {alias}")
        assert (reply["status"], reply["account"]) == ("ok", account), reply
        # A login managing two accounts: the summary is the login's, and it is the household's, not the solo one.
        values = reply["result"]["accountValues"]
        assert set(values) == ({SOLO} if account == SOLO else {PARENT, CHILD}), reply

    other = shell(household, f"HEALTH_PORT={int(household.env['HEALTH_PORT']) + 10} consumer --account {CHILD} status")
    assert other.returncode == 0, other.stdout + other.stderr
    assert f"account       {CHILD}" in other.stdout
    assert "ready: gateway connected, pulling" in other.stdout


def test_a_message_for_an_unknown_account_gets_one_unknown_account_reply(household: Stack):
    section = demo_section(household, "a message for DU999999")
    (line,) = [line for line in section.splitlines() if line.startswith("<<< ")]
    assert "error" in line
    assert "unknown_account: no deployment serves the account 'DU999999'" in section

    shell(household, "consumer replies --subscription unknown-account")  # sees every reply from now on
    unknown = publish(household, "summary --account DU888888")
    assert (unknown["status"], unknown["error"]["code"]) == ("error", "unknown_account"), unknown
    # Published after it: once the household consumer has answered this, it has seen the unknown one too.
    after = publish(household, "ping --account child")
    assert (after["status"], after["account"]) == ("ok", CHILD), after
    seen: list[dict[str, Any]] = []

    def answered_after() -> bool:
        pulled = shell(household, "consumer replies --subscription unknown-account --json")
        seen.extend(json.loads(line) for line in pulled.stdout.splitlines())
        return any(r["messageId"] == after["messageId"] for r in seen)

    wait_for(answered_after, 30, "the replies on the new subscription")
    assert [r["error"]["code"] for r in seen if r["messageId"] == unknown["messageId"]] == ["unknown_account"]


def test_make_stop_ends_both_gateways_and_both_consumers_and_frees_every_port(household: Stack):
    recorded = json.loads((household.workdir / "stack.json").read_text())
    groups = recorded["groups"]
    assert set(groups) == {
        "Pub/Sub emulator", "Firestore emulator", f"simulated gateway {SOLO}", f"simulated gateway {PARENT}",
        f"consumer {SOLO}", f"consumer {PARENT}",
    }  # fmt: skip
    ports = [port for _, _, port in recorded["listeners"]]
    health, ib = int(household.env["HEALTH_PORT"]), int(household.env["IB_PORT"])
    assert set(household.ports) | {ib + 1, health + 10} == set(ports)
    assert all(group_alive(g) for g in groups.values())

    stopped = subprocess.run(
        ["make", "--no-print-directory", "stop"], cwd=REPO, env=household.env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped the local stack of pid"), stopped.stdout
    assert household.process.wait(60) == 0
    # A process that has exited is still in its group until reaped: wait for the groups, not only the processes.
    ended = lambda: not leftovers(household) and not any(group_alive(g) for g in groups.values())  # noqa: E731
    wait_for(ended, 30, "every process and group of the stack to end")
    assert all(port_free("127.0.0.1", port) for port in ports)
    assert not (household.workdir / "stack.json").exists()


def test_closing_the_terminal_ends_both_gateways_and_both_consumers(tmp_path: Path):
    stack = start_stack(tmp_path, ["make", "--no-print-directory", "run", "ACCOUNTS=household"])
    try:
        recorded = json.loads((stack.workdir / "stack.json").read_text())
        assert len(recorded["groups"]) == 6
        os.killpg(stack.process.pid, signal.SIGHUP)  # what the terminal does to its foreground process group
        stack.process.wait(90)
        groups = recorded["groups"].values()
        ended = lambda: not leftovers(stack) and not any(group_alive(g) for g in groups)  # noqa: E731
        wait_for(ended, 30, "every process and group of the stack to end")
        assert all(port_free("127.0.0.1", port) for _, _, port in recorded["listeners"])
        assert len(recorded["listeners"]) == 6
    finally:
        kill_leftovers(stack)
