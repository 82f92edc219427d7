"""Turning a Pub/Sub message into a validated request, or a precise reason why not.

Pure code: it runs in the Pub/Sub callback thread and never touches the broker or the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from consumer.errors import BadRequest, clip
from consumer.schemas import Schemas, SchemaViolation

ENVELOPE_SCHEMA = "envelope.schema.json"
# The envelope fields a message attribute may carry (gcloud's --attribute); the others are read from the body only.
ATTRIBUTE_FIELDS = ("intent", "schedule", "account", "tradingMode")

# Bounds on what a message may be, checked before anything reads it (README, "Messages"). Intents are small: a
# 1,000-instrument allocation is about 40 KB and 7 levels deep.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_DEPTH = 16
MAX_STRING_LENGTH = 4096
MAX_KEY_LENGTH = 256
# Integers as Firestore stores them (64-bit signed).
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1

# C0 and C1 control characters, DEL, and UTF-16 surrogates (a lone one cannot be stored or encoded).
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_RESERVED_KEY = re.compile(r"^__.*__$")  # Firestore reserves these field names
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


@dataclass(frozen=True, slots=True)
class Delivery:
    """What Pub/Sub tells us about one delivery of a message."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    publish_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    delivery_attempt: int | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """An intent message's body, validated against schemas/envelope.schema.json: the intent, its params and the
    message's options (dry run, idempotency key, expiry, schedule, account). `to_request` builds the Request from it.
    """

    intent: str
    params: dict[str, Any]
    dry_run: bool = False
    idempotency_key: str | None = None
    expires_at: datetime | None = None
    schedule: str | None = None
    max_age_seconds: float | None = None
    ignore_market_hours: bool = False
    # As the body gives them; consumer.accounts checks them against the attributes and the deployment.
    account: str | None = None
    trading_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded delivery: the unit the dispatcher works on. `envelope` is None when decoding failed."""

    delivery: Delivery
    envelope: Envelope | None
    request_id: str
    problem: BadRequest | None = None
    # The served account whose books the request uses (consumer.accounts); None before routing.
    account: str | None = None

    @property
    def intent(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.intent
        return self.delivery.attributes.get("intent") or None

    @property
    def dry_run(self) -> bool:
        return bool(self.envelope and self.envelope.dry_run)

    @property
    def fingerprint(self) -> str:
        """What the request asks for (intent, params, dry run), canonically hashed: a request id reused for
        anything else is a conflict, never a duplicate."""
        envelope = self.envelope
        what = {"intent": self.intent, "params": envelope.params if envelope else None, "dryRun": self.dry_run}
        return hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def staleness(self, default_max_age: float, now: datetime) -> tuple[str, str] | None:
        """(code, message) when the sender's `expiresAt` has passed or the message is older than its
        `maxAgeSeconds` (else `default_max_age`): no order may be placed for it. None while it is fresh."""
        envelope = self.envelope
        if envelope is None:
            return None
        if envelope.expires_at is not None and now >= envelope.expires_at:
            return "expired", f"the intent expired at {envelope.expires_at.isoformat()}"
        max_age = envelope.max_age_seconds or default_max_age
        age = (now - self.delivery.publish_time).total_seconds()
        if age > max_age:
            return "stale", f"the message was published {age:.0f}s ago, more than the {max_age:.0f}s it may wait"
        return None


def _refuse_body_fields(attributes: Mapping[str, str], schemas: Schemas) -> None:
    """An envelope field sent as an attribute (`--attribute=dryRun=true`, `expiresAt`, ...), or an attribute field
    spelled otherwise (`Account`, `trading_mode`), is refused: ignored, an allocation meant as a dry run, or past its
    expiry, or for another account (subscriptions route on `account` exactly), traded for real."""

    def plain(name: str) -> str:
        return name.lower().replace("_", "").replace("-", "")

    fields = {plain(f): f for f in schemas.document(ENVELOPE_SCHEMA)["properties"]}
    sent = sorted(k for k in attributes if plain(k) in fields and (k != fields[plain(k)] or k not in ATTRIBUTE_FIELDS))
    if sent:
        raise BadRequest(
            "unsupported_attribute",
            f"attributes {clip(', '.join(map(repr, sent)))}: attributes carry only {', '.join(ATTRIBUTE_FIELDS)}, "
            "spelled so; every other field goes in the message body; nothing was run",
        )


def decode(  # noqa: C901 (one check after another, each its own error code)
    delivery: Delivery, schemas: Schemas, schedule_zone: ZoneInfo, schedule_intents: Mapping[str, str] | None = None
) -> Envelope:
    """Raises BadRequest with a code a monitor can filter on and a message a person can act on."""
    attributes = delivery.attributes
    body = _json_body(delivery.data, has_intent_attribute=bool(attributes.get("intent")))
    if not isinstance(body, dict):
        raise BadRequest("not_an_object", f"the message must be a JSON object, got {type(body).__name__}")

    intent = body.get("intent")
    attribute_intent = attributes.get("intent")
    if attribute_intent:
        if intent is not None and intent != attribute_intent:
            raise BadRequest(
                "conflicting_intent",
                f"the message says intent {clip(repr(intent))} but its attribute says {clip(repr(attribute_intent))}",
            )
        body = {**body, "intent": attribute_intent}
    _refuse_body_fields(attributes, schemas)
    check_values({k: attributes[k] for k in ATTRIBUTE_FIELDS if k in attributes}, "attributes")
    attribute_schedule = attributes.get("schedule")
    if attribute_schedule:
        if body.get("schedule") is not None and body["schedule"] != attribute_schedule:
            raise BadRequest(
                "conflicting_schedule",
                f"the message says schedule {clip(repr(body['schedule']))} but its attribute says "
                f"{clip(repr(attribute_schedule))}; nothing was run",
            )
        body = {**body, "schedule": attribute_schedule}
    if "intent" not in body:
        raise BadRequest(
            "missing_intent", "no intent: give it in the message ('intent') or as the message attribute 'intent'"
        )
    if isinstance(body.get("expiresAt"), str):
        _timestamp(body["expiresAt"], "expiresAt")  # a missing time zone gets its own hint; the schema checks RFC 3339
    try:
        schemas.validate(ENVELOPE_SCHEMA, body)
    except SchemaViolation as e:
        raise BadRequest("invalid_envelope", f"invalid message: {e}", details=e.problems) from None

    expires_at = _timestamp(body["expiresAt"], "expiresAt") if "expiresAt" in body else None
    schedule = body.get("schedule")
    key = body.get("idempotencyKey")
    if schedule and schedule_intents is not None:
        # The slot's key belongs to the job's own intent: another intent must not take it (or be taken for it).
        expected = schedule_intents.get(schedule)
        if expected is None:
            raise BadRequest("unknown_schedule", f"no job {schedule!r} is declared in infra/schedules.yaml")
        if expected != body["intent"]:
            raise BadRequest(
                "schedule_mismatch",
                f"the job {schedule!r} publishes {expected!r}, not {body['intent']!r}; nothing was run",
            )
    if key is None and schedule:
        # Cloud Scheduler publishes a new message on every firing and every retry, so message ids cannot dedupe
        # it; the job name and its slot (the day, in the schedule's time zone) can.
        slot = delivery.publish_time.astimezone(schedule_zone).date().isoformat()
        key = f"schedule:{schedule}:{slot}"
    return Envelope(
        intent=body["intent"],
        params=body.get("params", {}),
        dry_run=body.get("dryRun", False),
        idempotency_key=key,
        expires_at=expires_at,
        schedule=schedule,
        max_age_seconds=body.get("maxAgeSeconds"),
        ignore_market_hours=body.get("ignoreMarketHours", False),
        account=body.get("account"),
        trading_mode=body.get("tradingMode"),
    )


def to_request(
    delivery: Delivery, schemas: Schemas, schedule_zone: ZoneInfo, schedule_intents: Mapping[str, str] | None = None
) -> Request:
    try:
        envelope = decode(delivery, schemas, schedule_zone, schedule_intents)
    except BadRequest as problem:
        return Request(delivery=delivery, envelope=None, request_id=delivery.message_id, problem=problem)
    return Request(delivery=delivery, envelope=envelope, request_id=envelope.idempotency_key or delivery.message_id)


def _json_body(data: bytes, has_intent_attribute: bool) -> Any:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadRequest(
            "too_large",
            f"the message has {len(data):,} bytes; an intent message may have at most {MAX_MESSAGE_BYTES:,}",
        )
    if not data.strip():
        if has_intent_attribute:
            return {}
        raise BadRequest("empty_message", 'the message is empty: send a JSON object such as {"intent": "summary"}')
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(
            "not_utf8", f"the message is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})"
        ) from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise BadRequest("too_deep", f"the message nests {depth} levels deep; at most {MAX_DEPTH} are allowed")
    try:
        body = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except BadRequest:
        raise
    except json.JSONDecodeError as e:
        raise BadRequest(
            "invalid_json", f"the message is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except ValueError as e:  # an integer of thousands of digits
        raise BadRequest("invalid_json", f"the message is not valid JSON: {clip(str(e))}") from None
    check_values(body)
    return body


def nesting_depth(text: str) -> int:
    """How deep objects and arrays nest, counted before parsing (a parser would recurse that deep)."""
    depth = deepest = 0
    for token in _BRACKET.findall(_STRING.sub('""', text)):
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_values(value: Any, path: str = "") -> None:
    """Refuses what JSON allows but no intent can mean: non-finite or huge numbers, control characters, lone
    surrogates, and keys Firestore would refuse when the message is recorded."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if not key or len(key) > MAX_KEY_LENGTH or _RESERVED_KEY.match(key) or _FORBIDDEN.search(key):
                raise BadRequest("invalid_key", f"{clip(repr(where))} is not an acceptable key name")
            check_values(item, where)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_values(item, f"{path}[{n}]")
    elif isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise BadRequest("too_long", f"{path or '(message)'}: a string of {len(value):,} characters (at most "
                             f"{MAX_STRING_LENGTH:,})")  # fmt: skip
        bad = _FORBIDDEN.search(value)
        if bad:
            raise BadRequest(
                "invalid_character",
                f"{path or '(message)'}: control character or lone surrogate U+{ord(bad.group()):04X} in "
                f"{clip(repr(value))}",
            )
    elif isinstance(value, (int, float)):
        _check_number(value, path)


def _check_number(value: float, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest("non_finite_number", f"{path or '(message)'}: numbers must be finite (got {value})")
    if isinstance(value, int) and not MIN_INTEGER <= value <= MAX_INTEGER:
        # Python's JSON reads any integer whole; Firestore keeps 64 bits, and its client refuses more when the
        # message's params are recorded, on every delivery. Like 1e400, it overflows what anything here can hold.
        raise BadRequest(
            "non_finite_number", f"{path or '(message)'}: integers must fit in 64 bits (got {clip(str(value))})"
        )


def _refuse_constant(name: str) -> Any:
    raise BadRequest("non_finite_number", f"{name} is not a number an intent accepts: numbers must be finite")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest("duplicate_key", f"the key {clip(repr(key))} appears twice in one object")
        out[key] = value
    return out


def _timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("invalid_envelope", f"{name}: {value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise BadRequest("invalid_envelope", f"{name}: {value!r} has no time zone (add Z or an offset)")
    return parsed
