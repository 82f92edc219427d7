"""`consumer`: run the service, publish ad-hoc intents, watch replies, check status.

    consumer serve                                   run the consumer until SIGTERM/SIGINT
    consumer publish INTENT [-p k=v ...] [--dry-run] [--wait]
    consumer publish --schedule JOB [--dry-run] [--as-scheduled] [--force] [--wait]
    consumer replies [--follow] [--intent X] [--status error] [--json] [--pull-timeout S]
    consumer status [--json]

Every command reads the same environment variables as the service (GOOGLE_CLOUD_PROJECT, PUBSUB_EMULATOR_HOST,
FIRESTORE_EMULATOR_HOST, TRADING_MODE, topic names ...), so it talks to the emulators or to a real project alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from consumer.config import ConfigError, Settings
from consumer.console import reply_details, reply_line

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"consumer: bad configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return int(args.run(settings, args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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
    publish.set_defaults(run=_publish)

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
        "--subscription", default="intent-replies-cli",
        help="the CLI's own subscription on the reply topic, created if missing (default intent-replies-cli)",
    )  # fmt: skip
    replies.set_defaults(run=_replies)

    status = commands.add_parser("status", help="gateway, kill switch and the last run of each intent")
    status.add_argument("--health-url", default=None, help="default http://127.0.0.1:$HEALTH_PORT")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)
    return parser


# -- serve -----------------------------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from consumer.logs import configure
    from consumer.service import Service

    configure(settings.log_format, settings.log_level)
    # ib_insync builds its event machinery at import; do it here, on the main thread, before the broker loop exists.
    import ib_insync  # noqa: F401

    service = Service(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: service.request_stop(signal.Signals(signum).name))
    return service.run()


# -- publish ---------------------------------------------------------------------------------------------------------


class UsageError(ValueError):
    pass


def build_envelope(
    intent: str,
    pairs: Sequence[str],
    params_json: str | None = None,
    dry_run: bool = False,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The message an operator means, validated against the same schemas the consumer uses."""
    from consumer.intents import builtin_intents
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

    intents = builtin_intents()
    if intent not in intents:
        raise UsageError(f"unknown intent {intent!r}; known intents: {', '.join(sorted(intents))}")
    envelope: dict[str, Any] = {"intent": intent, "params": params}
    if dry_run:
        envelope["dryRun"] = True
    if idempotency_key:
        envelope["idempotencyKey"] = idempotency_key
    schemas = Schemas()
    try:
        schemas.validate("envelope.schema.json", envelope)
        schemas.validate(intents[intent].schema, params, where="params")
    except SchemaViolation as e:
        raise UsageError(f"invalid {intent} message: {e}") from None
    return envelope


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

    from consumer.devstack.provision import SCHEDULES_DECLARATION

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
    try:
        if args.schedule:
            if args.intent or args.param or args.params:
                raise UsageError("--schedule JOB publishes the job's own intent and params; give no INTENT or -p")
            envelope = scheduled_envelope(
                args.schedule, args.dry_run, args.as_scheduled, args.force, args.idempotency_key
            )
            attributes["schedule"] = args.schedule
        elif args.as_scheduled or args.force:
            raise UsageError("--as-scheduled and --force apply to --schedule JOB only")
        elif args.intent:
            envelope = build_envelope(args.intent, args.param, args.params, args.dry_run, args.idempotency_key)
        else:
            raise UsageError("give an INTENT or --schedule JOB")
    except UsageError as e:
        print(f"consumer publish: {e}", file=sys.stderr)
        return EXIT_CONFIG
    intent = envelope["intent"]
    attributes["intent"] = intent
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(settings.project, settings.intents_topic)
    waiter = ReplyWaiter(settings) if args.wait else None
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
        reply = waiter.wait(message_id, args.timeout)
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

    def wait(self, message_id: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self._subscriber.pull(
                request={"subscription": self._path, "max_messages": 50}, timeout=max(1.0, deadline - time.monotonic())
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


# -- replies ---------------------------------------------------------------------------------------------------------


def _replies(settings: Settings, args: argparse.Namespace) -> int:
    import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
    from google.api_core import exceptions

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(settings.project, args.subscription)
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

        stream = subscriber.subscribe(path, on_reply)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
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
    return 0


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
