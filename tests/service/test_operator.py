"""The operator's day (issue 19): the local stack and the CLI, run as a person runs them.

These start real `make run` stacks (emulators, simulated gateway, consumer) on free ports, each in its own
DEVSTACK_DIR, so they never collide with a developer's `make run` or with the session's emulators.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from consumer.addresses import port_free
from devstack.emulators import FIRESTORE_JVM_OPTIONS, free_port
from tests.support import DEFAULT_CLOCK, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()
LEAN_JVM_OPTIONS = FIRESTORE_JVM_OPTIONS  # serial collector, quick compiler only: see stack_env
# Each test starts a local stack of its own (emulators included), so `make check` leaves them out too.
pytestmark = [pytest.mark.slow, pytest.mark.emulators]


@dataclass
class Stack:
    process: subprocess.Popen[str]
    env: dict[str, str]
    workdir: Path
    output: Path

    @property
    def ports(self) -> list[int]:
        return [
            int(self.env["PUBSUB_EMULATOR_HOST"].rsplit(":", 1)[1]),
            int(self.env["FIRESTORE_EMULATOR_HOST"].rsplit(":", 1)[1]),
            int(self.env["IB_PORT"]),
            int(self.env["HEALTH_PORT"]),
        ]

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def cli_env(self) -> dict[str, str]:
        """A second terminal: `.venv` activated and the export line the banner printed, nothing else of ours."""
        exports = re.search(r"^\s*export (.+)$", self.text(), re.MULTILINE)
        assert exports, self.text()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST") and k != "HEALTH_PORT"}
        env.update(dict(pair.split("=", 1) for pair in exports.group(1).split()))
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
        return env


def free_ports(*offsets: int, taken: set[int]) -> int:
    """A port p with p + each offset free, below the kernel's ephemeral range: `make run ACCOUNTS=...` listens on
    IB_PORT+n and HEALTH_PORT+10n, and a neighbour of a port the kernel handed out may be any client socket's.
    None of them in `taken`, the ports this stack already chose (free now, but not bound until it starts: two
    independent picks once gave the Pub/Sub emulator and the gateway one port); they are added to it."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = random.Random().sample(range(10_000, low - 100), 500)
    for port in candidates:
        ports = {port + offset for offset in offsets}
        if not ports & taken and all(port_free("127.0.0.1", p) for p in ports):
            taken |= ports
            return port
    raise RuntimeError(f"no free ports at offsets {offsets} below {low}")


def stack_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    taken: set[int] = set()
    env.update(
        PUBSUB_EMULATOR_HOST=f"127.0.0.1:{free_ports(0, taken=taken)}",
        FIRESTORE_EMULATOR_HOST=f"127.0.0.1:{free_ports(0, taken=taken)}",
        IB_PORT=str(free_ports(0, 1, 2, taken=taken)),  # a gateway per login (test_operator_accounts: two)
        HEALTH_PORT=str(free_ports(0, 10, 20, taken=taken)),
        GOOGLE_CLOUD_PROJECT="local-project",
        DEVSTACK_DIR=str(workdir),
        IBSIM_CLOCK=DEFAULT_CLOCK,
        # The stack's emulator JVMs (JAVA_TOOL_OPTIONS reaches the Java that gcloud starts): the serial collector and
        # the quick compiler only, as the suite's own (decision 18). A stack answers a few dozen messages; C2 and GC
        # threads cost about 1.8 s of CPU a stack for nothing while seven workers share two cores.
        JAVA_TOOL_OPTIONS=LEAN_JVM_OPTIONS,
    )
    return env


def start_stack(tmp: Path, command: list[str]) -> Stack:
    workdir = tmp / "devstack"
    output = tmp / "make-run.out"
    env = stack_env(workdir)
    with output.open("w") as out:
        # Its own session, as a terminal gives it: the process group is what a closed terminal signals.
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    stack = Stack(process, env, workdir, output)
    try:
        wait_for(lambda: "Serving until Ctrl-C" in stack.text() or process.poll() is not None, 240, "make run")
        assert process.poll() is None, stack.text()
    except BaseException:
        kill_leftovers(stack)
        raise
    return stack


def end(stack: Stack, timeout: float = 90.0) -> bool:
    """SIGTERM to the stack's process group, SIGKILL after `timeout`; True if it ended by itself."""
    if stack.process.poll() is None:
        os.killpg(stack.process.pid, signal.SIGTERM)
        try:
            stack.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(stack.process.pid, signal.SIGKILL)
            return False
    return True


def terminate(stack: Stack) -> None:
    """`kill -TERM -<pgid>`, as a CI runner's timeout does: the stack must end by itself. make passes the SIGTERM on
    to the runner, which so gets it twice; it used to deadlock in its signal handler one time in three and stay up
    (tests/consumer/test_stop_signals.py)."""
    stopped = end(stack, timeout=30)
    kill_leftovers(stack)
    assert stopped, f"make run ignored SIGTERM for 30 s:\n{stack.text()[-1500:]}"


def recorded_groups(stack: Stack) -> dict[str, int]:
    return json.loads((stack.workdir / "stack.json").read_text())["groups"]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def leftovers(stack: Stack | Path) -> dict[int, str]:
    """Every process of this stack still alive, found by its unique DEVSTACK_DIR (not through the stack file)."""
    workdir = stack.workdir if isinstance(stack, Stack) else stack
    marker = f"DEVSTACK_DIR={workdir}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def kill_leftovers(stack: Stack | Path) -> None:
    """Whatever a failed test left running is killed, so a failure cannot leak a stack."""
    if isinstance(stack, Stack):
        end(stack)
    own = os.getpgrp()
    for pid in leftovers(stack):
        try:
            group = os.getpgid(pid)
            # A CLI process a test started (bash, gcloud) shares the test runner's group: killing that group would
            # end pytest and whatever runs it (make, CI) with SIGKILL and no report.
            os.kill(pid, signal.SIGKILL) if group == own else os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


# Session-scoped (one worker runs every test using it: tests/conftest.py STACK_FIXTURES), so the stack is not
# stopped and started again each time that worker runs another module's test in between.
@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"), ["make", "--no-print-directory", "run"])
    yield running
    terminate(running)


def shell(stack: Stack, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=stack.cli_env(), capture_output=True, text=True, timeout=timeout
    )


def readme_block(heading: str) -> list[str]:
    """The shell lines of the first sh block under a README heading, continuations joined."""
    section = README.split(heading, 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def with_stack_addresses(stack: Stack, line: str) -> str:
    """The README prints the default addresses; this stack runs on free ports."""
    for default, var in (("127.0.0.1:8085", "PUBSUB_EMULATOR_HOST"), ("127.0.0.1:8081", "FIRESTORE_EMULATOR_HOST")):
        line = line.replace(default, stack.env[var])
    return line.replace("HEALTH_PORT=8080", f"HEALTH_PORT={stack.env['HEALTH_PORT']}")


def test_the_demo_trades_on_the_paper_scenario(stack: Stack):
    """make run serves ibsim/scenarios/paper.yaml (regular hours, margin, delayed data but US ETFs), and its demo
    allocation still fills: here on the tests' fixed clock, a Wednesday in mid-session."""
    assert "(scenario paper," in (stack.workdir / "gateway.log").read_text()
    demo = stack.text().split(">>> allocation on the paper account", 1)[1].split(">>>", 1)[0]
    assert re.search(r"^<<< .*allocation\s+ok", demo, re.MULTILINE), demo
    assert re.search(r"^\s+SPY .* filled alloc-", demo, re.MULTILINE), demo
    assert re.search(r"^\s+TLT .* filled alloc-", demo, re.MULTILINE), demo
    assert "next regular open" not in stack.text()  # IBSIM_CLOCK given: the clock is not chosen for it


# -- the README, as printed --------------------------------------------------------------------------------------


# Its budget covers starting the session's stack too (pytest-timeout counts fixture set-up), at the start of
# `make test`, where a CI run measured each CLI command at ~11 s beside six workers and the lint on two cores.
@pytest.mark.timeout(300)
@pytest.mark.slow(seconds=25)
def test_every_readme_example_answers_ok_under_the_seeded_config(stack: Stack):
    """Issue 19: `publish allocation --dry-run --wait` failed under the seeded config (dummy needs weights)."""
    day = readme_block("## A day with it")
    assert day[0].startswith("consumer status")
    shell(stack, "consumer replies")  # the CLI's subscription exists before the replies it should see
    for line in day:
        if "--follow" in line:
            continue  # runs until Ctrl-C: below
        done = shell(stack, line)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        if "--wait" in line:
            first = done.stdout.splitlines()[0]
            assert " ok " in first, f"{line}\n{done.stdout}"

    follow = next(line for line in day if "--follow" in line)
    watcher = subprocess.Popen(
        ["bash", "-c", f"exec {follow.split('#')[0]}"], cwd=REPO, env=stack.cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stderr is not None
    assert watcher.stderr.readline().startswith("waiting for replies on projects/local-project/subscriptions/")
    watcher.send_signal(signal.SIGINT)
    assert watcher.wait(30) == 0

    adhoc = [with_stack_addresses(stack, line) for line in readme_block("### Publishing an ad-hoc intent")]
    export = next(line for line in adhoc if line.startswith("export "))
    assert all(var in export for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"))
    shell(stack, "consumer replies --subscription readme-adhoc")  # sees every reply from now on
    published = shell(stack, "\n".join(line for line in adhoc if not line.startswith("#")))
    assert published.returncode == 0, published.stderr
    assert " ok " in published.stdout.splitlines()[0]
    assert "messageIds:" in published.stdout  # the gcloud form, as printed, published
    seen: list[str] = []

    def both_answered() -> bool:
        pulled = shell(stack, "consumer replies --subscription readme-adhoc --intent summary --json")
        seen.extend(json.loads(line)["status"] for line in pulled.stdout.splitlines())
        return len(seen) >= 2

    wait_for(both_answered, 30, "replies to both summaries")
    assert seen == ["ok", "ok"]


def test_every_declared_schedule_answers_ok_under_the_seeded_config(stack: Stack):
    """Issue 19: the open-allocation job could never succeed locally."""
    jobs = yaml.safe_load((REPO / "infra" / "schedules.yaml").read_text())["jobs"]
    for job in jobs:
        force = " --force" if job.get("paused") else ""
        done = shell(stack, f"consumer publish --schedule {job['name']}{force} --wait --json")
        assert done.returncode == 0, f"{job['name']}: {done.stdout}{done.stderr}"
        reply = json.loads(done.stdout)
        assert (reply["status"], reply["intent"]) == ("ok", job["intent"]), reply
    status = shell(stack, "consumer status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ready: gateway connected, pulling" in status.stdout


def test_the_banner_exports_what_status_needs(stack: Stack):
    """Issue 19: without HEALTH_PORT in the export line, `consumer status` looked at 8080 and still exited 0."""
    assert f"HEALTH_PORT={stack.env['HEALTH_PORT']}" in stack.text()
    assert shell(stack, "consumer status").returncode == 0
    elsewhere = shell(stack, f"HEALTH_PORT={free_port()} consumer status")
    assert elsewhere.returncode == 1
    assert "consumer      not reachable" in elsewhere.stdout


def test_a_long_rebalance_shows_its_progress_on_the_make_run_terminal(stack: Stack):
    """Issue 19: the progress of a long rebalance went only to the log file."""
    weights = {s: 0.05 for s in ("SPY", "QQQ", "VIXY", "IWM", "TLT", "GLD", "AAPL", "MSFT", "EUR.USD", "GBP.USD")}
    params = {
        "strategies": ["dummy"],
        "strategyParams": {"dummy": {
            "weights": weights,
            "instruments": {pair: {"secType": "CASH", "exchange": "IDEALPRO", "currency": "USD"}
                            for pair in ("EUR.USD", "GBP.USD")},
        }},
    }  # fmt: skip
    done = shell(stack, f"consumer publish allocation --params '{json.dumps(params)}' --wait --json")
    assert done.returncode == 0, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["status"] == "ok", reply
    assert len(reply["result"]["instruments"]) == 10
    assert reply["result"]["orders"]["sent"] == 10
    progress = f"allocation {reply['requestId']}: 10/10 orders confirmed"
    wait_for(lambda: progress in stack.text(), 10, "the progress line on the make run terminal")
    # ... and on the terminal of `publish --wait` (stderr: stdout stays the reply alone, for --json)
    assert progress in done.stderr


# -- one line instead of a traceback -------------------------------------------------------------------------------


def test_a_second_make_run_is_refused_in_one_line(stack: Stack):
    again = subprocess.run(
        [sys.executable, "-m", "devstack", "run"], cwd=REPO, env=stack.env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert again.returncode == 3
    runner = json.loads((stack.workdir / "stack.json").read_text())["runner"]
    assert again.stderr.strip().splitlines() == [
        f"make run: a local stack is already running (pid {runner}, {stack.workdir}/stack.json): "
        "use it, or end it with `make stop` (python -m devstack stop)"
    ]
    assert stack.process.poll() is None


@pytest.mark.parametrize("variable", ["IB_PORT", "HEALTH_PORT"])
def test_a_taken_port_fails_at_once_naming_its_variable(tmp_path: Path, variable: str):
    """Issue 19: a taken IB_PORT was announced as the simulated gateway and failed 63 s later, pointing elsewhere."""
    env = stack_env(tmp_path / "devstack")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env[variable] = str(taken.getsockname()[1])
        try:
            done = subprocess.run(
                [sys.executable, "-m", "devstack", "run"], cwd=REPO, env=env, capture_output=True,
                text=True, timeout=CLI_TIMEOUT,  # the reported failure came 63 s later
            )  # fmt: skip
            assert not leftovers(tmp_path / "devstack")
        finally:
            kill_leftovers(tmp_path / "devstack")
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"make run: port {env[variable]} ({variable}) is taken on 127.0.0.1: free it, or set {variable} to a free port"
    ]
    assert "simulated IB Gateway on" not in done.stdout  # nothing was announced, nothing started
    for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
        host, port = env[var].rsplit(":", 1)
        assert port_free(host, int(port))


# The failures these tests guard against hung for 58 s and 259 s before saying anything; a command that says so in
# one line returns in seconds. The bound is the subprocess's timeout (it raises), far from both, not a timing target:
# a loaded machine may take several seconds to start Python.
CLI_TIMEOUT = 45


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args], env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT
    )


def test_with_the_stack_down_commands_say_so_in_one_line_within_seconds():
    """Issue 19: `status` was silent 259 s then a RetryError traceback; `publish --wait` 58 s then 69 lines."""
    down = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": down, "FIRESTORE_EMULATOR_HOST": down}
    for args in (["status"], ["publish", "summary", "--wait"], ["replies"]):
        done = cli(env, *args)
        assert done.returncode == 3, done.stderr
        variable = "FIRESTORE_EMULATOR_HOST" if args == ["status"] else "PUBSUB_EMULATOR_HOST"
        assert done.stderr.strip().splitlines() == [
            f"consumer {args[0]}: nothing answers on {down} ({variable}): start the local stack with `make run`, "
            "or export the address it printed"
        ]

    debug = cli(env, "--debug", "status")
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("consumer status: nothing answers on")


def test_without_the_emulator_variables_the_cli_says_what_to_set(tmp_path: Path):
    """Issue 19: forgetting the emulator variables gave a 23-line DefaultCredentialsError traceback."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"), GCE_METADATA_HOST="127.0.0.1:9")
    done = cli(env, "status")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "consumer status: no Google credentials: for the local stack set PUBSUB_EMULATOR_HOST and "
        "FIRESTORE_EMULATOR_HOST (make run prints the export line); for a real project run "
        "`gcloud auth application-default login`"
    ]
    half = {**env, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}
    done = cli(half, "status")
    assert done.returncode == 3
    assert "PUBSUB_EMULATOR_HOST is set but FIRESTORE_EMULATOR_HOST is not" in done.stderr


def test_with_credentials_but_no_route_to_google_the_cli_fails_in_one_line(tmp_path: Path):
    """Issue 19: with a login but no network, `config show` was silent for more than five minutes (token refresh and
    connection retries) before any output."""
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_EMULATOR_HOST")}
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(adc), GOOGLE_CLOUD_PROJECT="my-trading-project")
    try:
        socket.getaddrinfo("firestore.googleapis.com", 443)
        offline = False
    except OSError:
        offline = True
    for args in (["config", "show"], ["publish", "summary", "--wait"]):
        done = cli(env, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"consumer {args[0]}: ")
        if offline:  # this machine: no route to Google, the probe names the address
            host = "firestore" if args[0] == "config" else "pubsub"
            assert done.returncode == 3
            assert lines[0].startswith(f"consumer {args[0]}: cannot reach {host}.googleapis.com:443 (")
            assert lines[0].endswith("check the network; for the local stack export PUBSUB_EMULATOR_HOST and "
                                     "FIRESTORE_EMULATOR_HOST (make run prints them)")  # fmt: skip


def test_serve_with_a_taken_health_port_names_the_variable():
    """Issue 19: a taken HEALTH_PORT gave `OSError: [Errno 98]` without naming the variable."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli({**os.environ, "HEALTH_PORT": str(port)}, "serve")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"consumer serve: HEALTH_PORT={port} is taken on 127.0.0.1 (HEALTH_HOST): another consumer or `make run`? "
        "Stop it (`make stop`), or set HEALTH_PORT to a free port (0 turns the endpoint off)"
    ]


# -- a stack that cleans up after itself -------------------------------------------------------------------------


@pytest.mark.slow(seconds=20)
def test_closing_the_terminal_stops_everything(tmp_path: Path):
    """Issue 19: SIGHUP (a closed tmux session or window) left seven processes holding all four ports."""
    stack = start_stack(tmp_path, ["make", "--no-print-directory", "run"])
    try:
        assert len(leftovers(stack)) >= 6  # make, the runner, two emulators (wrapper and Java), gateway, consumer
        os.killpg(stack.process.pid, signal.SIGHUP)  # what the terminal does to its foreground process group
        stack.process.wait(90)
        wait_for(lambda: not leftovers(stack), 30, "every process of the stack to end")
        assert all(port_free("127.0.0.1", port) for port in stack.ports)
        assert not (stack.workdir / "stack.json").exists()
    finally:
        kill_leftovers(stack)


@pytest.mark.slow(seconds=30)
def test_make_stop_ends_a_stack_whose_runner_was_killed(tmp_path: Path):
    stack = start_stack(tmp_path, [sys.executable, "-m", "devstack", "run"])
    try:
        groups = recorded_groups(stack)
        assert set(groups) == {"Pub/Sub emulator", "Firestore emulator", "simulated gateway", "consumer"}
        stack.process.kill()  # SIGKILL: no clean-up at all, the children keep the ports
        stack.process.wait(10)
        assert all(group_alive(g) for g in groups.values())
        refused = subprocess.run(
            [sys.executable, "-m", "devstack", "run"], cwd=REPO, env=stack.env, capture_output=True,
            text=True, timeout=30,
        )  # fmt: skip
        assert refused.returncode == 3
        assert "(left behind by an earlier run? `make stop` ends it)" in refused.stderr

        stopped = subprocess.run(
            ["make", "--no-print-directory", "stop"], cwd=REPO, env=stack.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith("ended what an earlier run left behind: ")
        assert not leftovers(stack)
        assert all(port_free("127.0.0.1", port) for port in stack.ports)
        again = subprocess.run(
            ["make", "--no-print-directory", "stop"], cwd=REPO, env=stack.env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert again.returncode == 0
        assert "nothing to stop" in again.stdout
    finally:
        kill_leftovers(stack)
