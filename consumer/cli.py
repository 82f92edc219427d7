"""`consumer`: run the service, publish ad-hoc intents, watch replies, check status.

    consumer serve                                   run the consumer until SIGTERM/SIGINT
    consumer publish INTENT [-p k=v ...] [--dry-run] [--wait]
    consumer publish --schedule JOB [--dry-run] [--as-scheduled] [--force] [--wait]
    consumer replies [--follow] [--intent X] [--status error] [--json] [--pull-timeout S]
    consumer status [--json]
    consumer config show | set KEY VALUE | unset KEY | kill-switch on|off

Every command reads the same environment variables as the service (GOOGLE_CLOUD_PROJECT, PUBSUB_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST, TRADING_MODE, topic names ...), so it talks to the emulators or to a real project alike.
A failure is one line on stderr saying what is wrong and what to do; --debug (or LOG_LEVEL=DEBUG) adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from consumer.config import ConfigError, Settings
from consumer.console import reply_details, reply_line
from consumer.stop_signals import stop_event

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
# The bounds below are the operator command's own, not the service's (an interactive tool: what a user may tune is
# a flag, such as `replies --pull-timeout`), so they are not in Settings.
# How long a probe of an emulator's (or Google's) address may take before it counts as down.
PROBE_SECONDS = 2.0
# `publish --wait` looks for progress this often, and says it is still waiting this often when it cannot show any.
WAIT_TICK_SECONDS = 1.0
STILL_WAITING_SECONDS = 15
CLOUD_HOSTS = {"pubsub": "pubsub.googleapis.com", "firestore": "firestore.googleapis.com"}


class Unreachable(RuntimeError):
    """What a command needs is not answering; the message names the address, its variable and what to do."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = f"consumer {args.command}"
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"consumer: bad configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    debug = args.debug or settings.log_level == "DEBUG"
    try:
        settings = _addressed(settings, args)
        if args.needs:
            probe_google(args.needs)
        return int(args.run(settings, args) or 0)
    except Unreachable as e:
        _fail(command, str(e), debug)
        return EXIT_UNREACHABLE
    except UsageError as e:
        _fail(command, str(e), debug)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        _fail(command, explain(e), debug)
        return EXIT_FAILED


def _addressed(settings: Settings, args: argparse.Namespace) -> Settings:
    """--account, resolved to the account id as the consumer resolves an address (consumer/accounts.py): books and
    config live under accounts/{id}, and only an id routes to another deployment. An alias kept as given wrote a
    config no consumer read; a name ACCOUNTS_FILE does not list is refused for the same reason, except by publish,
    which sends it as given for the consumers to judge (the default deployment answers it `unknown_account`)."""
    if not args.account:
        return settings
    from consumer.accounts import named_account

    try:
        args.account = named_account(settings.accounts_file, args.account, strict=args.command != "publish")
    except ConfigError as e:
        raise UsageError(f"--account: {e}") from None
    return dataclasses.replace(settings, ib_account=args.account, ib_accounts=())


def required_account(settings: Settings) -> str:
    """The account whose documents a command reads: --account, else the deployment's (IB_ACCOUNTS/IB_ACCOUNT)."""
    if not settings.account:
        raise UsageError("which account? give --account ID (or set IB_ACCOUNT): the books are kept per account")
    return settings.account


def _fail(command: str, sentence: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"{command}: {sentence}", file=sys.stderr)


def explain(error: BaseException) -> str:
    """One sentence for the failures an operator meets, instead of a client library's traceback."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(error, auth.DefaultCredentialsError):
        return (
            "no Google credentials: for the local stack set PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST "
            "(make run prints the export line); for a real project run `gcloud auth application-default login`"
        )
    if isinstance(error, api.NotFound):
        return f"not found: {error.message} (is GOOGLE_CLOUD_PROJECT right, and the topology provisioned?)"
    if isinstance(error, api.PermissionDenied | api.Unauthenticated):
        return f"permission denied: {error.message}"
    if isinstance(error, api.RetryError | api.DeadlineExceeded | api.ServiceUnavailable):
        return f"Google Cloud did not answer in time ({type(error).__name__}); check the network and the project"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''} (--debug shows the traceback)"


def probe_google(needs: Sequence[str], environ: dict[str, str] | None = None) -> None:
    """Fail in seconds, naming the variable, when an emulator a command needs is not set or not answering.

    Without this, the client libraries retry a refused connection for minutes before raising.
    """
    import os

    from consumer.addresses import port_open, split_host_port

    env = dict(os.environ) if environ is None else environ
    variables = {"pubsub": "PUBSUB_EMULATOR_HOST", "firestore": "FIRESTORE_EMULATOR_HOST"}
    emulated = [v for v in variables.values() if env.get(v)]
    for need in needs:
        var = variables[need]
        address = env.get(var)
        if not address:
            if emulated:  # half pointed at the emulators: the other half would go to the real cloud
                raise Unreachable(f"{emulated[0]} is set but {var} is not: export both (make run prints them)")
            probe_cloud(CLOUD_HOSTS[need])
            continue
        try:
            host, port = split_host_port(address)
        except ValueError as e:
            raise Unreachable(f"{var}: {e}") from None
        if not port_open(host.strip("[]"), port, timeout=PROBE_SECONDS):
            raise Unreachable(
                f"nothing answers on {address} ({var}): start the local stack with `make run`, "
                f"or export the address it printed"
            )


def probe_cloud(host: str, timeout: float = PROBE_SECONDS) -> None:
    """The real service's address must answer before a client library is let loose on it.

    Without a network the libraries retry token refreshes and connections for five minutes and more before they
    fail. Credentials come first (google.auth reads them locally): a missing login is the likelier mistake.
    """
    import socket
    import threading

    import google.auth

    google.auth.default()  # DefaultCredentialsError -> explain(): "no Google credentials ..."
    outcome: dict[str, str] = {}

    def connect() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                outcome["ok"] = ""
        except OSError as e:
            outcome["error"] = e.strerror or type(e).__name__

    attempt = threading.Thread(target=connect, name=f"probe {host}", daemon=True)
    attempt.start()
    attempt.join(2 * timeout)
    if "ok" not in outcome:
        why = outcome.get("error", f"no answer within {2 * timeout:g} s")
        raise Unreachable(
            f"cannot reach {host}:443 ({why}): check the network; for the local stack export "
            "PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST (make run prints them)"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    parser.add_argument(
        "--account",
        help="the IB account, an id or an alias of ACCOUNTS_FILE (resolved to its id; config and status refuse a\n"
        "name the file does not list): publish addresses the message to it (the attribute 'account'); config and\n"
        "status read its documents (default: IB_ACCOUNTS' first, or IB_ACCOUNT)",
    )
    parser.set_defaults(needs=())
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    serve = commands.add_parser("serve", help="run the consumer until SIGTERM/SIGINT")
    serve.set_defaults(run=_serve)

    publish = commands.add_parser("publish", help="validate and publish an intent")
    publish.add_argument("intent", nargs="?", help="the intent to run (or --schedule)")
    publish.add_argument(
        "--schedule",
        metavar="JOB",
        help="publish the message of a job in infra/schedules.yaml, as Cloud Scheduler does, under its own\n"
        "idempotency key: today's scheduled firing of the job still runs",
    )
    publish.add_argument(
        "--as-scheduled", action="store_true",
        help="with --schedule: stand in for today's scheduled firing (the slot's key schedule:JOB:DAY), so the\n"
        "scheduled message of this slot is then answered as a duplicate",
    )  # fmt: skip
    publish.add_argument("--force", action="store_true", help="with --schedule: fire a job declared paused")
    publish.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a param; VALUE is JSON when it parses as JSON, else a string; dotted keys nest (a.b=1)",
    )  # fmt: skip
    publish.add_argument("--params", help="all params as one JSON object (merged under --param)")
    publish.add_argument("--dry-run", action="store_true", help="compute and report, place nothing")
    publish.add_argument("--key", dest="idempotency_key", help="idempotency key (default: the message id)")
    publish.add_argument("--wait", action="store_true", help="wait for the reply and print it")
    publish.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply (default 120)")
    publish.add_argument("--json", action="store_true", help="print the reply as JSON")
    publish.set_defaults(run=_publish)  # probes Pub/Sub itself, after validating: a bad param needs no network

    replies = commands.add_parser("replies", help="print replies from the reply topic")
    replies.add_argument("--follow", "-f", action="store_true", help="keep printing new replies until Ctrl-C")
    replies.add_argument("--intent", help="only this intent")
    replies.add_argument("--status", choices=["ok", "error", "rejected"], help="only this status")
    replies.add_argument("--json", action="store_true", help="one JSON object per line")
    replies.add_argument(
        "--pull-timeout", type=float, default=5.0, metavar="SECONDS",
        help="without --follow: how long a pull waits for replies before the command ends (default 5)",
    )  # fmt: skip
    replies.add_argument(
        "--subscription", default=None,
        help="the CLI's own subscription on the reply topic, created if missing (default REPLY_TOPIC-cli)",
    )  # fmt: skip
    replies.set_defaults(run=_replies, needs=("pubsub",))

    status = commands.add_parser("status", help="gateway, kill switch and the last run of each intent")
    status.add_argument("--health-url", default=None, help="default http://127.0.0.1:$HEALTH_PORT")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status, needs=("firestore",))

    report = commands.add_parser(
        "report", help="the daily P&L snapshots: a terminal table, and with --html a page with plots"
    )
    report.add_argument("--days", type=int, default=30, help="the last N snapshots (default 30)")
    report.add_argument("--html", metavar="FILE", default=None, help="also write a self-contained HTML page")
    report.set_defaults(run=_report, needs=("firestore",))

    config = commands.add_parser(
        "config", help="show or change accounts/{ACCOUNT}/config/{TRADING_MODE}, validated as the consumer reads it",
        description="Read and change the trading configuration document accounts/{ACCOUNT}/config/{TRADING_MODE}.\n"
        "Every change is validated against schemas/trading-config.schema.json and the leverage cap before it is\n"
        "written, in one transaction, so a concurrent edit is never lost. VALUE is JSON when it parses as JSON,\n"
        "else a string.",
        formatter_class=argparse.RawTextHelpFormatter,
    )  # fmt: skip
    config.set_defaults(run=_config, needs=("firestore",))
    actions = config.add_subparsers(required=True, metavar="ACTION", dest="action")
    actions.add_parser("show", help="print the document as JSON")
    set_ = actions.add_parser("set", help="set a dotted key, e.g. exposure.strategies.dummy 0.3")
    set_.add_argument("key")
    set_.add_argument("value")
    unset = actions.add_parser("unset", help="remove a dotted key")
    unset.add_argument("key")
    kill = actions.add_parser("kill-switch", help="on: trading disabled (tradingEnabled false); off: enabled")
    kill.add_argument("state", choices=["on", "off"])
    migrate = commands.add_parser(
        "migrate-accounts",
        help="copy the books from before accounts (config/MODE, tradingModes/MODE, activity) under --account",
    )
    migrate.add_argument("--mode", choices=["paper", "live"], help="the trading mode to copy (default TRADING_MODE)")
    migrate.set_defaults(run=_migrate_accounts, needs=("firestore",))
    # Also after the command (`consumer publish --account A`); SUPPRESS keeps a value given before it.
    for command in (publish, status, config, migrate):
        command.add_argument("--account", default=argparse.SUPPRESS, help="as --account before the command")
    return parser


# -- serve -----------------------------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.addresses import port_free
    from consumer.logs import configure

    # Imports ib_insync, which builds its event machinery at import: here, on the main thread, before the broker loop.
    from consumer.process import Consumer

    if settings.health_port and not port_free(settings.health_host, settings.health_port):
        raise UsageError(
            f"HEALTH_PORT={settings.health_port} is taken on {settings.health_host} (HEALTH_HOST): another consumer or "
            "`make run`? Stop it (`make stop`), or set HEALTH_PORT to a free port (0 turns the endpoint off)"
        )
    configure(settings.log_format, settings.log_level)
    service = Consumer(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: service.request_stop(signal.Signals(signum).name))
    return service.run()


# -- publish ---------------------------------------------------------------------------------------------------------


class UsageError(ValueError):
    """A command line the `consumer` command cannot act on; printed with exit code EXIT_CONFIG, no traceback."""

    pass


def build_envelope(  # noqa: C901 (one branch per command-line option, in the order the envelope takes them)
    intent: str,
    pairs: Sequence[str],
    params_json: str | None = None,
    dry_run: bool = False,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The message an operator means, validated against the same schemas the consumer uses."""
    from consumer.intents import DECLARED, params_schema
    from consumer.schemas import Schemas, SchemaViolation

    params: dict[str, Any] = {}
    if params_json:
        try:
            params = json.loads(params_json)
        except json.JSONDecodeError as e:
            raise UsageError(f"--params is not JSON: {e.msg}") from None
        if not isinstance(params, dict):
            raise UsageError("--params must be a JSON object")
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = params
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value

    if intent not in DECLARED:
        raise UsageError(f"unknown intent {intent!r}; known intents: {', '.join(sorted(DECLARED))}")
    envelope: dict[str, Any] = {"intent": intent, "params": params}
    if dry_run:
        envelope["dryRun"] = True
    if idempotency_key:
        envelope["idempotencyKey"] = idempotency_key
    schemas = Schemas()
    try:
        schemas.validate("envelope.schema.json", envelope)
        schemas.validate(params_schema(intent), params, where="params")
    except SchemaViolation as e:
        raise UsageError(f"invalid {intent} message: {e}") from None
    if intent == "allocation":
        problems = strategy_problems(params)
        if problems:
            raise UsageError(f"invalid {intent} message: {'; '.join(problems)}")
    return envelope


def strategy_problems(params: dict[str, Any]) -> list[str]:
    """What the consumer's allocation would refuse in the named strategies and their params, in its own words
    (consumer/intents/allocation.py choose_strategies). Capital is the config's business: the consumer checks it."""
    from consumer.strategies import discover, naming_problems, param_problems

    names = params.get("strategies")
    if not names:  # the config's default strategies: known to the consumer only
        return []
    known = discover()
    strategy_params: dict[str, Any] = params.get("strategyParams", {})
    problems = naming_problems(names, strategy_params, known)
    for name in names:
        if name in known:
            problems += param_problems(name, strategy_params.get(name, {}), known[name])
    return problems


def check_job_account(job_name: str, account: str | None, accounts_file: str = "") -> None:
    """A job that lists accounts fires once per account, each addressed: so must a firing by hand. `account` is an
    id already (`_addressed`); the job may list aliases."""
    from consumer.accounts import named_account
    from consumer.schedules import job_accounts

    accounts = job_accounts().get(job_name)
    if accounts and account not in {named_account(accounts_file, a, strict=False) for a in accounts}:
        given = f"not for {account}" if account else "give --account"
        raise UsageError(f"job {job_name!r} runs for the accounts {', '.join(accounts)}: {given}")


def scheduled_envelope(
    job_name: str,
    dry_run: bool = False,
    as_scheduled: bool = False,
    force: bool = False,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The message a Cloud Scheduler job of infra/schedules.yaml publishes (Terraform builds it the same way).

    Fired by hand it gets a key of its own (`manual:JOB:...`), because without one the consumer keys a message with
    the `schedule` attribute to the job's slot of the day, and the real firing would then be a duplicate. Only
    `as_scheduled` leaves the key to the consumer, to run the slot itself (a dry run cannot: it would use it up).
    """
    import yaml

    from consumer.data import SCHEDULES_DECLARATION

    jobs = {job["name"]: job for job in yaml.safe_load(SCHEDULES_DECLARATION.read_text())["jobs"]}
    if job_name not in jobs:
        raise UsageError(f"no job {job_name!r} in infra/schedules.yaml; jobs: {', '.join(sorted(jobs))}")
    job = jobs[job_name]
    if job.get("paused") and not force:
        raise UsageError(f"job {job_name!r} is paused in infra/schedules.yaml; not published (--force fires it)")
    declared_dry = bool(job.get("dryRun"))
    if as_scheduled and dry_run and not declared_dry:
        raise UsageError("--as-scheduled with --dry-run would use up today's slot with a dry run; give one of them")
    if as_scheduled and idempotency_key:
        raise UsageError("--as-scheduled uses the slot's key (schedule:JOB:DAY); --key cannot be given with it")
    key = None if as_scheduled else idempotency_key or f"manual:{job_name}:{uuid.uuid4().hex}"
    envelope = build_envelope(job["intent"], [], json.dumps(job.get("params", {})), declared_dry or dry_run, key)
    if "maxAgeSeconds" in job:
        envelope["maxAgeSeconds"] = job["maxAgeSeconds"]
    return envelope


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

    attributes: dict[str, str] = {}
    if args.schedule:
        if args.intent or args.param or args.params:
            raise UsageError("--schedule JOB publishes the job's own intent and params; give no INTENT or -p")
        envelope = scheduled_envelope(args.schedule, args.dry_run, args.as_scheduled, args.force, args.idempotency_key)
        attributes["schedule"] = args.schedule
        check_job_account(args.schedule, args.account, settings.accounts_file)
    elif args.as_scheduled or args.force:
        raise UsageError("--as-scheduled and --force apply to --schedule JOB only")
    elif args.intent:
        envelope = build_envelope(args.intent, args.param, args.params, args.dry_run, args.idempotency_key)
    else:
        raise UsageError("give an INTENT or --schedule JOB")
    probe_google(("pubsub",))
    intent = envelope["intent"]
    attributes["intent"] = intent
    if args.account:
        attributes["account"] = args.account
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(settings.project, settings.intents_topic)
    waiter = ReplyWaiter(settings) if args.wait else None
    progress = WaitProgress.for_local_stack() if args.wait else None  # before publishing: no line can be missed
    try:
        message_id = publisher.publish(topic, json.dumps(envelope).encode(), **attributes).result(timeout=30)
        print(f"published {intent} as message {message_id} to {topic}", file=sys.stderr)
        if args.schedule:
            how = (
                "standing in for today's scheduled firing"
                if args.as_scheduled
                else f"under its own key {envelope['idempotencyKey']}; today's scheduled firing still runs"
            )
            print(f"job {args.schedule} fired by hand, {how}", file=sys.stderr)
        if waiter is None:
            return 0
        print(f"waiting up to {args.timeout:g}s for the reply ...", file=sys.stderr, flush=True)
        progress = progress or WaitProgress(None)
        progress.follow({message_id, envelope.get("idempotencyKey") or message_id})
        reply = waiter.wait(message_id, args.timeout, on_tick=progress.tick)
        progress.flush()  # the last lines: the consumer logs them before it publishes the reply
    finally:
        if waiter is not None:
            waiter.close()
        publisher.transport.close()
    if reply is None:
        print(f"consumer publish: no reply within {args.timeout:g}s (is the consumer running?)", file=sys.stderr)
        return 1
    _print_reply(reply, as_json=args.json)
    return 0 if reply.get("status") == "ok" else 1


class ReplyWaiter:
    """A throwaway subscription on the reply topic, made before publishing so the reply cannot be missed."""

    def __init__(self, settings: Settings) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

        self._subscriber = pubsub_v1.SubscriberClient()
        self._path = self._subscriber.subscription_path(settings.project, f"cli-wait-{uuid.uuid4().hex[:12]}")
        self._subscriber.create_subscription(
            request={
                "name": self._path,
                "topic": f"projects/{settings.project}/topics/{settings.reply_topic}",
                "ack_deadline_seconds": 10,
                "expiration_policy": {"ttl": {"seconds": 86400}},
            }
        )

    def wait(self, message_id: str, timeout: float, on_tick: Callable[[], None] | None = None) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            response = self._subscriber.pull(
                request={"subscription": self._path, "max_messages": 50},
                timeout=max(1.0, min(WAIT_TICK_SECONDS, deadline - time.monotonic())),
            )
            if not response.received_messages:
                continue
            self._subscriber.acknowledge(
                request={"subscription": self._path, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
            for received in response.received_messages:
                reply = json.loads(received.message.data)
                if reply.get("messageId") == message_id:
                    return reply
        return None

    def close(self) -> None:
        try:
            self._subscriber.delete_subscription(request={"subscription": self._path})
        finally:
            self._subscriber.close()


class WaitProgress:
    """What `publish --wait` shows while it waits: on the local stack, this request's progress lines from the
    consumer's log (as make run's terminal shows them); elsewhere, a line every STILL_WAITING_SECONDS."""

    def __init__(self, echo: Any | None) -> None:
        self._echo = echo
        self._started = time.monotonic()
        self._said = 0

    @classmethod
    def for_local_stack(cls) -> WaitProgress:
        """The local stack's echo when `make run` is serving from this checkout; otherwise the periodic line."""
        import os

        from consumer.local_stack import ProgressEcho, StackFile, workdir

        directory = workdir(os.environ)
        live = StackFile(directory).live_runner() is not None
        return cls(ProgressEcho(directory / "consumer.log", out=sys.stderr) if live else None)

    def follow(self, request_ids: set[str]) -> None:
        if self._echo is not None:
            self._echo.request_ids = request_ids

    def flush(self) -> None:
        if self._echo is not None:
            self._echo.poll()

    def tick(self) -> None:
        if self._echo is not None:
            self._echo.poll()
            return
        waited = int((time.monotonic() - self._started) // STILL_WAITING_SECONDS) * STILL_WAITING_SECONDS
        if waited > self._said:
            self._said = waited
            print(f"    ... still waiting ({waited} s)", file=sys.stderr, flush=True)


# -- replies ---------------------------------------------------------------------------------------------------------


def cli_subscription(settings: Settings) -> str:
    return f"{settings.reply_topic}-cli"


def _replies(settings: Settings, args: argparse.Namespace) -> int:  # noqa: C901 (a pull loop and its filters)
    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
    from google.api_core import exceptions

    subscriber = pubsub_v1.SubscriberClient()
    # Named after the reply topic: renaming the topic (REPLY_TOPIC) renames the CLI's reader with it.
    path = subscriber.subscription_path(settings.project, args.subscription or cli_subscription(settings))
    with contextlib.suppress(exceptions.AlreadyExists):
        subscriber.create_subscription(
            request={"name": path, "topic": f"projects/{settings.project}/topics/{settings.reply_topic}"}
        )

    def wanted(reply: dict[str, Any]) -> bool:
        return (args.intent is None or reply.get("intent") == args.intent) and (
            args.status is None or reply.get("status") == args.status
        )

    printed = 0
    try:
        if not args.follow:
            # What is waiting now, then exit: pull until a pull comes back empty.
            while True:
                try:
                    response = subscriber.pull(
                        request={"subscription": path, "max_messages": 100}, timeout=args.pull_timeout
                    )
                except exceptions.DeadlineExceeded:
                    break  # nothing came within the pull timeout: the same as an empty pull
                if not response.received_messages:
                    break
                for received in response.received_messages:
                    reply = json.loads(received.message.data)
                    if wanted(reply):
                        _print_reply(reply, as_json=args.json)
                        printed += 1
                subscriber.acknowledge(
                    request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
                )
            if not printed and not args.json:
                print("no new replies", file=sys.stderr)
            return 0

        lock = threading.Lock()

        def on_reply(message: Any) -> None:
            reply = json.loads(message.data)
            if wanted(reply):
                with lock:
                    _print_reply(reply, as_json=args.json)
            message.ack()

        stop = stop_event((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        stream = subscriber.subscribe(path, on_reply)
        print(f"waiting for replies on {path} (Ctrl-C stops) ...", file=sys.stderr, flush=True)
        stop.wait()
        stream.cancel()
        return 0
    finally:
        subscriber.close()


def _print_reply(reply: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply, default=str), flush=True)
        return
    colour = sys.stdout.isatty()
    print(reply_line(reply, colour=colour), flush=True)
    for line in reply_details(reply):
        print(line, flush=True)


# -- migrate-accounts ------------------------------------------------------------------------------------------------


def _migrate_accounts(settings: Settings, args: argparse.Namespace) -> int:
    from google.cloud import firestore

    from consumer.store.migrate import migrate_to_account

    if not args.account:
        raise UsageError("give --account ID: the account the old books belong to")
    mode = args.mode or settings.trading_mode
    db = firestore.Client(project=settings.project)
    try:
        done = migrate_to_account(db, args.account, mode)
    finally:
        db.close()
    print(json.dumps({"account": args.account, "tradingMode": mode, **done.as_dict()}))
    return 0


# -- config ----------------------------------------------------------------------------------------------------------


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from google.cloud import firestore

    from consumer.report import page, table

    if args.days < 1:
        raise UsageError("--days must be at least 1")
    from consumer.store.layout import mode_path

    db = firestore.Client(project=settings.project)
    collection = db.document(mode_path(required_account(settings), settings.trading_mode)).collection("snapshots")
    query = collection.order_by("date", direction=firestore.Query.DESCENDING).limit(args.days)
    snapshots = [s.to_dict() or {} for s in query.stream()][::-1]
    print(table(snapshots))
    if args.html:
        title = f"Daily P&L ({required_account(settings)}, {settings.trading_mode})"
        Path(args.html).write_text(page(snapshots, title), encoding="utf-8")
        print(f"wrote {args.html}")
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    from google.cloud import firestore

    from consumer.schemas import Schemas
    from consumer.store.layout import config_path
    from consumer.store.trading_config import DeploymentLimits, check_document, edited

    path = config_path(required_account(settings), settings.trading_mode)
    db = firestore.Client(project=settings.project)
    ref = db.document(path)
    try:
        if args.action == "show":
            snapshot = ref.get()
            if not snapshot.exists:
                print(f"no {path} document: trading is off (`consumer config kill-switch off` starts one)")
                return EXIT_FAILED
            print(json.dumps(snapshot.to_dict(), indent=2, sort_keys=True, default=str))
            return 0
        if args.action == "kill-switch":
            key, value, unset = "tradingEnabled", args.state == "off", False
        else:
            key, unset = args.key, args.action == "unset"
            value = _json_or_text(args.value) if not unset else None
        schemas = Schemas()
        limits = DeploymentLimits(settings.allow_live, settings.leverage_cap_max)

        lifted: list[str] = []

        @firestore.transactional
        def change(transaction: firestore.Transaction) -> dict[str, Any]:
            snapshot = ref.get(transaction=transaction)
            try:
                document = edited(snapshot.to_dict() if snapshot.exists else None, key, value, unset)
                if args.action == "kill-switch":
                    # A person has taken the switch: risk-check's halt, if any, is no longer why trading is off.
                    # Replaced, not extended: Firestore runs this again when the document changed meanwhile.
                    lifted[:] = [
                        str(document.pop(k)) for k in ("haltedReason", "haltedAt", "haltedBy") if k in document
                    ]
                elif key in ("tradingEnabled", "haltedReason", "haltedAt"):
                    document.pop("haltedBy", None)  # the halt is a person's now, not a risk-check's own
                check_document(document, schemas, path, limits)
            except ValueError as e:
                raise UsageError(f"{path} not changed: {e}") from None
            transaction.set(ref, document)
            return document

        document = change(db.transaction())
    finally:
        db.close()
    _report_change(path, args, key, value, unset, document, lifted)
    return 0


def _report_change(
    path: str, args: argparse.Namespace, key: str, value: Any, unset: bool, document: dict[str, Any], lifted: list[str]
) -> None:
    """What `consumer config` changed, said to the person who ran it."""
    if args.action == "kill-switch":
        state = "ON: trading intents are rejected" if args.state == "on" else "OFF: trading enabled"
        print(f"{path}: kill switch {state}")
        if lifted:
            print(f"{path}: the halt ({', '.join(lifted)}) is cleared")
    elif unset:
        print(f"{path}: {key} removed")
    else:
        print(f"{path}: {key} = {json.dumps(value)}")
    if args.action != "kill-switch" and not document.get("tradingEnabled"):
        print(f"{path}: tradingEnabled is not true: trading intents are rejected", file=sys.stderr)


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


# -- status ----------------------------------------------------------------------------------------------------------


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.status import gather_status, render_status

    host = settings.health_host
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask on loopback
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    url = args.health_url or f"http://{host}:{settings.health_port}"
    report = gather_status(settings, url, fetch=_fetch_json)
    if args.json:
        print(json.dumps(report, default=str, indent=2))
    else:
        print(render_status(report))
    # Scripts and monitors read the exit code: non-zero whenever the consumer is not up and pulling.
    return 0 if report["consumer"]["ready"] else EXIT_FAILED


def _fetch_json(url: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


if __name__ == "__main__":
    sys.exit(main())
