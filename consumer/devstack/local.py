"""`make run`: emulators, simulated gateway and consumer on documented addresses, a demo, then serve until Ctrl-C.

Each address comes from its standard variable when set, else from the defaults below (README, "Local stack").
Everything started here runs in its own process group and is stopped as a group, so Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.console import reply_details, reply_line
from consumer.devstack.emulators import EmulatorPair, http_ok, port_open, split_host_port, stop_process_group

DEFAULTS = {
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8081",
    "IB_PORT": "4002",
    "HEALTH_PORT": "8080",
    "GOOGLE_CLOUD_PROJECT": "local-project",
}
WORKDIR = Path(".devstack")
REPLY_SUBSCRIPTION = "devstack-replies"


@dataclass(frozen=True)
class LocalAddresses:
    pubsub: str
    firestore: str
    ib_port: int
    health_port: int
    project: str

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
        return cls(
            pubsub=value["PUBSUB_EMULATOR_HOST"],
            firestore=value["FIRESTORE_EMULATOR_HOST"],
            ib_port=int(value["IB_PORT"]),
            health_port=int(value["HEALTH_PORT"]),
            project=value["GOOGLE_CLOUD_PROJECT"],
        )

    def environ(self) -> dict[str, str]:
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub,
            "FIRESTORE_EMULATOR_HOST": self.firestore,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "IB_HOST": "127.0.0.1",
            "IB_PORT": str(self.ib_port),
            "HEALTH_PORT": str(self.health_port),
        }


DEMO: list[tuple[str, dict[str, Any] | bytes]] = [
    ("gateway time and connection", {"intent": "ping"}),
    ("the account at a glance", {"intent": "summary"}),
    (
        "allocation, dry run: what the dummy strategy would trade",
        {
            "intent": "allocation",
            "dryRun": True,
            "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.2, "TLT": 0.1}}}},
        },
    ),
    (
        "allocation on the paper account: orders placed, confirmed and booked",
        {
            "intent": "allocation",
            "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.2, "TLT": 0.1}}}},
        },
    ),
    ("the same holdings checked against the broker", {"intent": "reconcile"}),
    ("a malformed message gets an error reply, and the consumer keeps serving", b'{"intent": "summary",'),
]


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


def run() -> int:
    addresses = LocalAddresses.from_env(os.environ)
    WORKDIR.mkdir(exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    _say(f"local stack for project {addresses.project}; logs in {WORKDIR}/")
    with contextlib.ExitStack() as stack:
        _say(f"starting the Pub/Sub ({addresses.pubsub}) and Firestore ({addresses.firestore}) emulators ...")
        stack.enter_context(
            EmulatorPair(addresses.pubsub, addresses.firestore, project=addresses.project, workdir=WORKDIR)
        )
        env = {**os.environ, **addresses.environ()}
        os.environ.update(addresses.environ())

        gateway = _start(
            stack, "simulated gateway",
            [sys.executable, "-m", "ibsim", "--host", "127.0.0.1", "--port", str(addresses.ib_port),
             *(["--clock", env["IBSIM_CLOCK"]] if env.get("IBSIM_CLOCK") else [])], env,
        )  # fmt: skip
        _wait(lambda: port_open("127.0.0.1", addresses.ib_port), gateway, 15, "the simulated gateway to listen")
        _say(f"simulated IB Gateway on 127.0.0.1:{addresses.ib_port} (paper account DU123456)")

        from consumer.devstack.provision import provision
        from consumer.devstack.seed import seed_config

        created = provision(addresses.project)
        _say(f"Pub/Sub topology from infra/pubsub.yaml: {len(created)} created, the rest already there")
        if seed_config(addresses.project):
            _say("seeded config/paper: trading enabled, an exposure share for every strategy")
        else:
            _say("config/paper exists; left as it is")

        consumer = _start(
            stack, "consumer", [sys.executable, "-m", "consumer", "serve"], {**env, "LOG_FORMAT": "console"}
        )
        health = f"http://127.0.0.1:{addresses.health_port}/readyz"
        _wait(lambda: http_ok(health), consumer, 60, "the consumer to connect and subscribe")
        _say(f"consumer ready ({health})")

        replies = stack.enter_context(_reply_stream(addresses.project))
        _demo(addresses.project, replies, stop)
        _print_howto(addresses)

        while not stop.wait(1.0):
            for child in (gateway, consumer):
                if not child.alive():
                    _say(f"the {child.name} exited with code {child.process.returncode}; see {child.log_path}")
                    return 1
            _print_pending(replies)
        _say("stopping ...")
    _say("stopped: emulators, gateway and consumer are down")
    return 0


def _start(stack: contextlib.ExitStack, name: str, args: list[str], env: Mapping[str, str]) -> Child:
    child = Child(name, args, WORKDIR / f"{name.split()[-1]}.log", env)
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


def _demo(project: str, replies: Any, stop: threading.Event) -> None:
    import queue

    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(project, "intents")
    try:
        for title, body in DEMO:
            if stop.is_set():
                return
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            print(f"\n>>> {title}\n    {data.decode(errors='replace')}", flush=True)
            message_id = publisher.publish(topic, data).result(timeout=30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():
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


def _print_howto(a: LocalAddresses) -> None:
    print(
        f"""
Serving until Ctrl-C. Replies to anything published to the intents topic are printed here.
From another terminal:
  export PUBSUB_EMULATOR_HOST={a.pubsub} FIRESTORE_EMULATOR_HOST={a.firestore} GOOGLE_CLOUD_PROJECT={a.project}
  .venv/bin/consumer publish summary --wait
  .venv/bin/consumer publish allocation -p strategies='["dummy"]' -p strategyParams.dummy.weights.QQQ=0.1 --wait
  .venv/bin/consumer status
or with the gcloud CLI:
  CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://{a.pubsub}/ gcloud pubsub topics publish intents \\
      --project={a.project} --message='{{}}' --attribute=intent=summary
""",
        flush=True,
    )


def _wait(predicate: Any, child: Child, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not child.alive():
            tail = child.log_path.read_text(errors="replace")[-1500:]
            raise SystemExit(f"the {child.name} exited while waiting for {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; see {child.log_path}")
        time.sleep(0.1)


def _say(text: str) -> None:
    print(f"--- {text}", flush=True)
