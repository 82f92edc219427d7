"""`make run`: emulators, simulated gateway and consumer on documented addresses, a demo, then serve until Ctrl-C.

`make run ACCOUNTS=...` starts a gateway and a consumer per login instead (README, "Two logins, three accounts").

Each address comes from its standard variable when set, else from the defaults below (README, "Local stack").
Everything started here runs in its own process group and is stopped as a group, so Ctrl-C, SIGTERM and SIGHUP
(a closed terminal) leave nothing behind. The groups are recorded in `stack.json` in the work directory, so
`make stop` can end a stack whose runner was killed outright.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.addresses import port_free, port_open, split_host_port
from consumer.console import reply_details, reply_line
from consumer.local_stack import ProgressEcho, StackFile, start_ticks, workdir
from consumer.stop_signals import stop_event
from devstack.emulators import EmulatorPair, http_ok, stop_process_group

DEFAULTS = {
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8081",
    "IB_PORT": "4002",
    "HEALTH_PORT": "8080",
    "GOOGLE_CLOUD_PROJECT": "local-project",
}
REPLY_SUBSCRIPTION = "devstack-replies"
LOCAL_ACCOUNT = "DU123456"  # the paper account of ibsim's default scenario
# The demo needs this long in session; closer to the close, the gateway's clock starts at the next open instead.
DEMO_MINUTES = dt.timedelta(minutes=10)
# What a paper account at IB Gateway really does: regular hours with holidays, margin, delayed data but US ETFs.
PAPER_SCENARIO = Path(__file__).resolve().parents[1] / "ibsim" / "scenarios" / "paper.yaml"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# `make run ACCOUNTS=...`: logins separated by `:`, a login's accounts by `,`, each `ID` or `ID=alias`; a name here
# stands for a built-in layout. The first login is the default deployment (README, "Local stack").
LAYOUTS = {"household": "DU111111=solo:DU222222=parent,DU333333=child"}
# Login n (from 0) listens on IB_PORT+n and HEALTH_PORT+10n: +n would put the second consumer on 8081, Firestore's.
HEALTH_PORT_STEP = 10
ACCOUNTS_FILE = "accounts.yaml"


class StackError(RuntimeError):
    """The stack cannot start or stop; the message is the one line the person sees."""


class Interrupted(Exception):
    """A stop signal arrived while the stack was still starting."""


@dataclass(frozen=True)
class Login:
    """One simulated IB login: the accounts it manages, each with an alias or None."""

    accounts: tuple[tuple[str, str | None], ...]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(account for account, _ in self.accounts)

    def named(self) -> str:
        return ", ".join(f"{a} ({alias})" if alias else a for a, alias in self.accounts)


def parse_layout(value: str) -> tuple[Login, ...]:
    """ACCOUNTS: a built-in layout's name, or `ID[=alias],...:ID[=alias],...`; a ValueError says what is wrong."""
    spec = LAYOUTS.get(value, value)
    logins: list[Login] = []
    names: set[str] = set()
    for part in spec.split(":"):
        accounts: list[tuple[str, str | None]] = []
        for item in part.split(","):
            account, _, alias = item.strip().partition("=")
            for name in (account, alias) if alias else (account,):
                if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                    raise ValueError(f"{name!r} is not an account id or alias (letters, digits, - and _)")
                if name in names:
                    raise ValueError(f"{name} is named twice")
                names.add(name)
            accounts.append((account, alias or None))
        logins.append(Login(tuple(accounts)))
    return tuple(logins)


@dataclass(frozen=True)
class Deployment:
    """A simulated gateway and the consumer serving its login's accounts."""

    login: Login
    index: int
    ib_port: int
    health_port: int
    default: bool
    subscription: str
    # Empty for the single-account stack, whose names, logs and groups stay as they always were.
    suffix: str

    @property
    def gateway_name(self) -> str:
        return f"simulated gateway{self.suffix}"

    @property
    def consumer_name(self) -> str:
        return f"consumer{self.suffix}"

    def log_stem(self, kind: str) -> str:
        """The default deployment logs where a single stack does (`publish --wait` follows consumer.log)."""
        return kind if self.index == 0 else f"{kind}-{self.login.ids[0]}"


@dataclass(frozen=True)
class LocalAddresses:
    """Where `make run`'s parts listen: the standard variables when set, else the documented defaults (`from_env`).

    `deployments()` lays out one gateway and consumer per login; `environ()` and `consumer_environ()` are what the
    child processes get.
    """

    pubsub: str
    firestore: str
    ib_port: int
    health_port: int
    project: str
    # From ACCOUNTS: empty for the single-account stack (ibsim's DU123456 on one gateway).
    logins: tuple[Login, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LocalAddresses:
        value = {k: environ.get(k) or default for k, default in DEFAULTS.items()}
        for var in ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST"):
            try:
                split_host_port(value[var])
            except ValueError as e:
                raise SystemExit(f"{var}: {e}") from None
        for var in ("IB_PORT", "HEALTH_PORT"):
            if not value[var].isdigit():
                raise SystemExit(f"{var}={value[var]!r}: expected a port number")
        layout = environ.get("ACCOUNTS") or ""
        try:
            logins = parse_layout(layout) if layout else ()
        except ValueError as e:
            raise SystemExit(
                f"ACCOUNTS={layout!r}: {e}; e.g. ACCOUNTS=household or ACCOUNTS=DU1=a:DU2=b,DU3=c"
            ) from None
        addresses = cls(
            pubsub=value["PUBSUB_EMULATOR_HOST"],
            firestore=value["FIRESTORE_EMULATOR_HOST"],
            ib_port=int(value["IB_PORT"]),
            health_port=int(value["HEALTH_PORT"]),
            project=value["GOOGLE_CLOUD_PROJECT"],
            logins=logins,
        )
        ports = [port for _, _, port in addresses.listeners()]
        if len(set(ports)) != len(ports) or max(ports) > 65535:
            raise SystemExit(
                f"the stack's ports {', '.join(map(str, ports))} overlap or run past 65535: set IB_PORT, HEALTH_PORT "
                f"(login n listens on IB_PORT+n and HEALTH_PORT+{HEALTH_PORT_STEP}n) and the emulator addresses apart"
            )
        return addresses

    def deployments(self) -> list[Deployment]:
        """One per login; the first is the default deployment, on the subscription a single consumer uses."""
        if not self.logins:
            login = Login(((LOCAL_ACCOUNT, None),))
            return [Deployment(login, 0, self.ib_port, self.health_port, True, "intents-consumer", "")]
        return [
            Deployment(
                login,
                n,
                self.ib_port + n,
                self.health_port + HEALTH_PORT_STEP * n,
                n == 0,
                "intents-consumer" if n == 0 else f"intents-consumer-{n + 1}",
                f" {login.ids[0]}",
            )
            for n, login in enumerate(self.logins)
        ]

    def listeners(self) -> list[tuple[str, str, int]]:
        """(variable, host, port) of every address the stack listens on."""
        pubsub, firestore = split_host_port(self.pubsub), split_host_port(self.firestore)
        return [
            ("PUBSUB_EMULATOR_HOST", *pubsub),
            ("FIRESTORE_EMULATOR_HOST", *firestore),
            ("IB_PORT", "127.0.0.1", self.ib_port),
            ("HEALTH_PORT", "127.0.0.1", self.health_port),
            *(
                (f"{var}+{step * n}", "127.0.0.1", base + step * n)
                for n in range(1, len(self.logins))
                for var, base, step in (
                    ("IB_PORT", self.ib_port, 1),
                    ("HEALTH_PORT", self.health_port, HEALTH_PORT_STEP),
                )
            ),
        ]

    def environ(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub,
            "FIRESTORE_EMULATOR_HOST": self.firestore,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "IB_HOST": "127.0.0.1",
            "IB_PORT": str(self.ib_port),
            "IB_ACCOUNT": self.logins[0].ids[0] if self.logins else LOCAL_ACCOUNT,
            "HEALTH_PORT": str(self.health_port),
        }

    def consumer_environ(self, d: Deployment, accounts_file: Path | None) -> dict[str, str]:
        """The consumer of one login: the single-account stack's as it always was, else its accounts, gateway,
        health port, subscription and role, with the accounts file every deployment shares."""
        if not self.logins:
            return self.environ()
        return {
            **self.environ(),
            "IB_PORT": str(d.ib_port),
            "HEALTH_PORT": str(d.health_port),
            "IB_ACCOUNT": "",
            "IB_ACCOUNTS": ",".join(d.login.ids),
            "ACCOUNTS_FILE": str(accounts_file or ""),
            "DEFAULT_DEPLOYMENT": "yes" if d.default else "no",
            "INTENTS_SUBSCRIPTION": d.subscription,
        }


# (title, body, attributes)
DemoStep = tuple[str, dict[str, Any] | bytes, dict[str, str]]
DEMO: list[DemoStep] = [
    ("gateway time and connection", {"intent": "ping"}, {}),
    ("the account at a glance", {"intent": "summary"}, {}),
    (
        "allocation, dry run: what the dummy strategy would trade",
        {
            "intent": "allocation",
            "dryRun": True,
            "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.2, "TLT": 0.1}}}},
        },
        {},
    ),
    (
        "allocation on the paper account: orders placed, confirmed and booked",
        {
            "intent": "allocation",
            "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.2, "TLT": 0.1}}}},
        },
        {},
    ),
    ("the same holdings checked against the broker", {"intent": "reconcile"}, {}),
    ("a malformed message gets an error reply, and the consumer keeps serving", b'{"intent": "summary",', {}),
]
UNKNOWN_ACCOUNT = "DU999999"


def account_demo(logins: tuple[Login, ...]) -> list[DemoStep]:
    """Several logins: each account's summary (the reply names the account id), addressed by its alias on the
    default deployment's login and by its id on the others' (only an id routes to another deployment: decision 56),
    an alias of another deployment's account, and one message for an account nobody serves."""
    steps: list[DemoStep] = []
    for n, login in enumerate(logins):
        for account, alias in login.accounts:
            named = alias if alias and n == 0 else account
            steps.append((
                f"summary of {account} (login {n + 1}), addressed with the attribute account={named}",
                {"intent": "summary"},
                {"account": named},
            ))  # fmt: skip
    elsewhere = [(account, alias) for login in logins[1:] for account, alias in login.accounts if alias]
    for account, alias in elsewhere[-1:]:
        steps.append((
            f"a summary addressed {alias}, the alias of {account}, which another deployment serves: one error from "
            "the default deployment, naming the id to address it by",
            {"intent": "summary"},
            {"account": alias},
        ))  # fmt: skip
    steps.append((
        f"a message for {UNKNOWN_ACCOUNT}, which no deployment serves: one error, from the default deployment",
        {"intent": "summary"},
        {"account": UNKNOWN_ACCOUNT},
    ))  # fmt: skip
    return steps


class Child:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env),
                start_new_session=True,
            )  # fmt: skip

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        stop_process_group(self.process, timeout)


def check_free(addresses: LocalAddresses, stack_file: StackFile) -> None:
    """Every port the stack needs, checked before anything starts: a taken one is named with its variable."""
    runner = stack_file.live_runner()
    if runner is not None:
        raise StackError(
            f"a local stack is already running (pid {runner}, {stack_file.path}): "
            "use it, or end it with `make stop` (python -m devstack stop)"
        )
    for var, host, port in addresses.listeners():
        if not port_free(host, port):
            leftover = " (left behind by an earlier run? `make stop` ends it)" if stack_file.read() else ""
            raise StackError(
                f"port {port} ({var}) is taken on {host}{leftover}: free it, or set {var.split('+')[0]} to a free port"
            )


def run() -> int:
    addresses = LocalAddresses.from_env(os.environ)
    directory = workdir(os.environ)
    directory.mkdir(parents=True, exist_ok=True)
    stack_file = StackFile(directory)
    check_free(addresses, stack_file)

    stop = stop_event(STOP_SIGNALS)
    groups: dict[str, int] = {}

    def record(name: str, pid: int) -> None:
        groups[name] = pid
        stack_file.write(groups, addresses.listeners())

    deployments = addresses.deployments()
    _say(f"local stack for project {addresses.project}; logs in {directory}/")
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(stack_file.remove)
            _say(f"starting the Pub/Sub ({addresses.pubsub}) and Firestore ({addresses.firestore}) emulators ...")
            emulators = stack.enter_context(
                EmulatorPair(addresses.pubsub, addresses.firestore, project=addresses.project, workdir=directory)
            )
            for emulator in (emulators.pubsub, emulators.firestore):
                if emulator.process is not None:
                    record(f"{emulator.name} emulator", emulator.process.pid)
            _check(stop)
            env = {**os.environ, **addresses.environ()}
            os.environ.update(addresses.environ())

            gateways = _start_gateways(stack, directory, addresses, deployments, env, record, stop)
            accounts_file = _prepare_cloud(directory, addresses, deployments)
            consumers = _start_consumers(stack, directory, addresses, deployments, env, accounts_file, record, stop)
            progress = [ProgressEcho(consumer.log_path) for consumer in consumers]

            replies = stack.enter_context(_reply_stream(addresses.project))
            _demo(
                addresses.project, replies, stop, progress, account_demo(addresses.logins) if addresses.logins else DEMO
            )
            _print_howto(addresses, deployments)

            while not stop.wait(1.0):
                for child in (*gateways, *consumers):
                    if not child.alive():
                        _say(f"the {child.name} exited with code {child.process.returncode}; see {child.log_path}")
                        return 1
                for echo in progress:
                    echo.poll()
                _print_pending(replies)
            _say("stopping ...")
    except Interrupted:
        _say("stopped while starting")
    _say("stopped: emulators, gateway and consumer are down")
    return 0


def _start_gateways(
    stack: contextlib.ExitStack,
    directory: Path,
    addresses: LocalAddresses,
    deployments: list[Deployment],
    env: Mapping[str, str],
    record: Callable[[str, int], None],
    stop: threading.Event,
) -> list[Child]:
    clock = _gateway_clock(env)
    gateways = []
    for d in deployments:
        scenario = _login_scenario(directory, d) if addresses.logins else PAPER_SCENARIO
        gateway = _start(
            stack, directory, d.gateway_name, _gateway_command(d.ib_port, clock, scenario), env, d.log_stem("gateway")
        )
        record(gateway.name, gateway.process.pid)
        gateways.append(gateway)
    for d, gateway in zip(deployments, gateways, strict=True):
        listening = lambda port=d.ib_port: port_open("127.0.0.1", port)  # noqa: E731
        _wait(listening, gateway, 15, "the simulated gateway to listen", stop)
        where = f"127.0.0.1:{d.ib_port}"
        if addresses.logins:
            _say(f"simulated IB Gateway on {where} (login with paper accounts {d.login.named()}, paper.yaml)")
        else:
            _say(f"simulated IB Gateway on {where} (paper account {LOCAL_ACCOUNT}, scenario paper.yaml)")
    return gateways


def _prepare_cloud(directory: Path, addresses: LocalAddresses, deployments: list[Deployment]) -> Path | None:
    """Topics, every deployment's subscription, the accounts file and each account's config; the file's path."""
    from devstack.provision import Topology, provision
    from devstack.seed import seed_config

    topology = Topology.load()
    created = provision(addresses.project, topology)
    for d in deployments:
        if d.subscription not in topology.subscriptions:  # declared like the default one
            spec = topology.subscriptions["intents-consumer"]
            created += provision(addresses.project, Topology({}, {d.subscription: spec}))
    _say(f"Pub/Sub topology from infra/pubsub.yaml: {len(created)} created, the rest already there")
    accounts_file = _write_accounts_file(directory, addresses.logins) if addresses.logins else None
    if accounts_file:
        _say(f"{accounts_file}: every account with its alias (the ACCOUNTS_FILE of every consumer)")
    for d in deployments:
        for account in d.login.ids:
            where = f"accounts/{account}/config/paper"
            if seed_config(addresses.project, account):
                _say(f"seeded {where}: trading enabled, capital for every strategy (docs: README, Local stack)")
            else:
                _say(f"{where} exists; left as it is")
    return accounts_file


def _start_consumers(
    stack: contextlib.ExitStack,
    directory: Path,
    addresses: LocalAddresses,
    deployments: list[Deployment],
    env: Mapping[str, str],
    accounts_file: Path | None,
    record: Callable[[str, int], None],
    stop: threading.Event,
) -> list[Child]:
    consumers = []
    for d in deployments:
        consumer_env = {**env, **addresses.consumer_environ(d, accounts_file), "LOG_FORMAT": "console"}
        command = [sys.executable, "-m", "consumer", "serve"]
        consumer = _start(stack, directory, d.consumer_name, command, consumer_env, d.log_stem("consumer"))
        record(consumer.name, consumer.process.pid)
        consumers.append(consumer)
    for d, consumer in zip(deployments, consumers, strict=True):
        health = f"http://127.0.0.1:{d.health_port}/readyz"
        _wait(lambda url=health: http_ok(url), consumer, 60, "the consumer to connect and subscribe", stop)
        if addresses.logins:
            role = ", the default deployment" if d.default else ""
            _say(f"{consumer.name} ready: serves {d.login.named()} on subscription {d.subscription}{role} ({health})")
        else:
            _say(f"consumer ready ({health})")
    return consumers


def _gateway_clock(env: Mapping[str, str]) -> str | None:
    clock = env.get("IBSIM_CLOCK") or demo_clock(dt.datetime.now(dt.UTC))
    if clock and not env.get("IBSIM_CLOCK"):
        _say(f"NYSE is closed now: the simulated gateway's clock starts at its next regular open, {clock}")
    return clock


def _gateway_command(port: int, clock: str | None, scenario: Path) -> list[str]:
    return [
        sys.executable, "-m", "ibsim", "--host", "127.0.0.1", "--port", str(port),
        "--scenario", str(scenario), *(["--clock", clock] if clock else []),
    ]  # fmt: skip


def _login_scenario(directory: Path, d: Deployment) -> Path:
    """paper.yaml with this login's accounts, each funded as ibsim's default paper account is."""
    import yaml

    data = yaml.safe_load(PAPER_SCENARIO.read_text())
    data["accounts"] = [
        {"id": account, "baseCurrency": "USD", "cash": {"USD": 1_000_000, "EUR": 50_000}, "positions": []}
        for account in d.login.ids
    ]
    path = directory / f"paper-{d.login.ids[0]}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write_accounts_file(directory: Path, logins: tuple[Login, ...]) -> Path:
    import yaml

    accounts = {a: {"aliases": [alias] if alias else []} for login in logins for a, alias in login.accounts}
    path = (directory / ACCOUNTS_FILE).resolve()
    path.write_text(yaml.safe_dump({"accounts": accounts}, sort_keys=False))
    return path


def demo_clock(now: dt.datetime) -> str | None:
    """The clock `make run` starts the simulated gateway on at the real time `now`: None (the real time) while
    NYSE's regular session is open, else its next regular open in New York time, so the demo's allocation trades
    at any hour of the real day instead of being held or refused by the paper scenario's regular hours (a session
    closing within DEMO_MINUTES counts as closed: the demo would run into the close)."""
    import exchange_calendars as xcals  # type: ignore[import-untyped]
    import pandas as pd  # type: ignore[import-untyped]

    ts = pd.Timestamp(now).tz_convert("UTC").floor("min")
    xnys = xcals.get_calendar("XNYS", start=f"{now.year - 1}-01-01", end=f"{now.year + 1}-12-31")
    if xnys.is_open_on_minute(ts) and xnys.is_open_on_minute(ts + DEMO_MINUTES):
        return None
    opens: pd.Timestamp = xnys.next_open(ts)
    return str(opens.tz_convert("America/New_York").isoformat())


def stop_stack(environ: Mapping[str, str], timeout: float = 60.0) -> str:
    """Ends the stack recorded in the work directory: its runner first (it stops its children), then any group
    still alive (the runner was killed outright). Returns what it did, in a sentence."""
    stack_file = StackFile(workdir(environ))
    data = stack_file.read()
    if data is None:
        return f"no local stack recorded in {stack_file.path}: nothing to stop"
    runner = stack_file.live_runner()
    if runner is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{runner}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    ended = []
    started = dict(data.get("started") or {})
    for name, pgid in dict(data.get("groups") or {}).items():
        if _ours(pgid, started.get(name)) and _group_alive(pgid):
            _end_group(pgid, timeout=10.0)
            ended.append(name)
    stack_file.remove()
    taken = [f"{port} ({var})" for var, host, port in data.get("listeners") or [] if not port_free(host, port)]
    if taken:
        raise StackError(f"stopped what was recorded, but still taken: {', '.join(taken)}; another program holds them")
    if runner is not None:
        return f"stopped the local stack of pid {runner}" + (f" and {', '.join(ended)}" if ended else "")
    return "ended what an earlier run left behind: " + (", ".join(ended) if ended else "nothing was still running")


def _ours(pgid: int, started: int | None) -> bool:
    """The recorded group is still the one the stack started: never the caller's own, and if a process holds the
    leader's pid, it is the leader that was recorded (same start time), not a later process given the number again.
    A leader gone while its group lives is ours: Linux gives no new process a pid still in use as a group id."""
    if pgid == os.getpgrp():
        return False
    now = start_ticks(pgid)
    return now is None or started is None or now == started


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's group now: not ours to end
        return False
    return True


def _end_group(pgid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise Interrupted


def _start(
    stack: contextlib.ExitStack, directory: Path, name: str, args: list[str], env: Mapping[str, str], log: str
) -> Child:
    child = Child(name, args, directory / f"{log}.log", env)
    stack.callback(child.stop)
    return child


@contextlib.contextmanager
def _reply_stream(project: str) -> Iterator[Any]:
    import queue

    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
    from google.api_core import exceptions

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, REPLY_SUBSCRIPTION)
    with contextlib.suppress(exceptions.AlreadyExists):
        subscriber.create_subscription(request={"name": path, "topic": f"projects/{project}/topics/intent-replies"})
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_reply(message: Any) -> None:
        received.put(json.loads(message.data))
        message.ack()

    stream = subscriber.subscribe(path, on_reply)
    try:
        yield received
    finally:
        stream.cancel()
        subscriber.close()


def _demo(
    project: str, replies: Any, stop: threading.Event, progress: list[ProgressEcho], steps: list[DemoStep]
) -> None:
    import queue

    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, "intents")
    try:
        for title, body, attributes in steps:
            if stop.is_set():
                return
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            shown = "".join(f"  {k}={v}" for k, v in attributes.items())
            print(f"\n>>> {title}\n    {data.decode(errors='replace')}{shown}", flush=True)
            message_id = publisher.publish(topic, data, **attributes).result(timeout=30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():
                for echo in progress:
                    echo.poll()
                try:
                    reply = replies.get(timeout=0.5)
                except queue.Empty:
                    continue
                _print_reply(reply)
                if reply.get("messageId") == message_id:
                    break
    finally:
        publisher.transport.close()


def _print_pending(replies: Any) -> None:
    import queue

    while True:
        try:
            _print_reply(replies.get_nowait())
        except queue.Empty:
            return


def _print_reply(reply: dict[str, Any]) -> None:
    colour = sys.stdout.isatty()
    print("<<< " + reply_line(reply, colour=colour), flush=True)
    for line in reply_details(reply):
        print(line, flush=True)


def _print_howto(a: LocalAddresses, deployments: list[Deployment]) -> None:
    if a.logins:
        _print_accounts_howto(a, deployments)
        return
    print(
        f"""
Serving until Ctrl-C (or closing this terminal). Replies to anything published to the intents topic are printed
here. From another terminal, in this directory (or activate .venv and drop the .venv/bin/ prefix):
  export {howto_exports(a, os.environ)}
  .venv/bin/consumer publish summary --wait
  .venv/bin/consumer publish allocation -p strategies='["dummy"]' -p strategyParams.dummy.weights.QQQ=0.1 --wait
  .venv/bin/consumer status
or with the gcloud CLI (no Google login needed for the emulator):
  CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://{a.pubsub}/ \\
      gcloud pubsub topics publish intents --project={a.project} --message='{{}}' --attribute=intent=summary
A stack left running (the terminal was killed) is ended by `make stop`.
""",
        flush=True,
    )


def _print_accounts_howto(a: LocalAddresses, deployments: list[Deployment]) -> None:
    named = [alias or account for d in deployments for account, alias in d.login.accounts]
    first, last = named[0], named[-1]  # one and the same with ACCOUNTS=ID
    others = "".join(
        f"  HEALTH_PORT={d.health_port} .venv/bin/consumer --account {d.login.ids[0]} status   # {d.consumer_name}\n"
        for d in deployments[1:]
    )
    print(
        f"""
Serving until Ctrl-C (or closing this terminal). Replies to anything published to the intents topic are printed
here, each with its account. From another terminal, in this directory (or activate .venv and drop the .venv/bin/
prefix):
  export {howto_exports(a, os.environ)}
  .venv/bin/consumer publish summary --account {last} --wait
  .venv/bin/consumer publish allocation --account {first} -p strategies='["dummy"]' \\
      -p strategyParams.dummy.weights.QQQ=0.1 --wait
  .venv/bin/consumer status                                      # the default deployment's consumer
{others}A stack left running (the terminal was killed) is ended by `make stop`.
""",
        flush=True,
    )


def howto_exports(a: LocalAddresses, environ: Mapping[str, str] | None = None) -> str:
    """Every variable the CLI needs to find this stack: without HEALTH_PORT, `consumer status` looks at 8080; a
    stack in a DEVSTACK_DIR of its own is named too, so `publish --wait` finds its log and shows progress; with
    several logins, ACCOUNTS_FILE, so that `--account ALIAS` is resolved to the id only an id routes by."""
    pairs = [f"{k}={v}" for k, v in a.environ().items() if k not in ("IB_HOST", "IB_PORT")]
    if environ is not None and environ.get("DEVSTACK_DIR"):
        pairs.append(f"DEVSTACK_DIR={workdir(environ).resolve()}")
    if a.logins:  # the CLI resolves --account ALIAS through it, as the consumers do
        pairs.append(f"ACCOUNTS_FILE={(workdir(os.environ if environ is None else environ) / ACCOUNTS_FILE).resolve()}")
    return " ".join(pairs)


def _wait(predicate: Any, child: Child, timeout: float, what: str, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        _check(stop)
        if not child.alive():
            tail = child.log_path.read_text(errors="replace")[-1500:]
            raise StackError(f"the {child.name} exited while waiting for {what}; see {child.log_path}:\n{tail}")
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}; see {child.log_path}")
        time.sleep(0.1)


def _say(text: str) -> None:
    # After SIGHUP the terminal is gone: writing to it must not stop the clean-up.
    with contextlib.suppress(OSError):
        print(f"--- {text}", flush=True)
