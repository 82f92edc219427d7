"""Turning a Pub/Sub message into a validated request, or a precise reason why not.

Pure code: it runs in the Pub/Sub callback thread and never touches the broker or the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from consumer.errors import BadRequest
from consumer.schemas import Schemas, SchemaViolation

ENVELOPE_SCHEMA = "envelope.schema.json"


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
    intent: str
    params: dict[str, Any]
    dry_run: bool = False
    idempotency_key: str | None = None
    expires_at: datetime | None = None
    schedule: str | None = None
    max_age_seconds: float | None = None
    ignore_market_hours: bool = False


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded delivery: the unit the dispatcher works on. `envelope` is None when decoding failed."""

    delivery: Delivery
    envelope: Envelope | None
    request_id: str
    problem: BadRequest | None = None

    @property
    def intent(self) -> str | None:
        if self.envelope is not None:
            return self.envelope.intent
        return self.delivery.attributes.get("intent") or None

    @property
    def dry_run(self) -> bool:
        return bool(self.envelope and self.envelope.dry_run)


def decode(delivery: Delivery, schemas: Schemas, schedule_zone: ZoneInfo) -> Envelope:
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
                f"the message says intent {intent!r} but its attribute says {attribute_intent!r}",
            )
        body = {**body, "intent": attribute_intent}
    if attributes.get("schedule") and "schedule" not in body:
        body = {**body, "schedule": attributes["schedule"]}
    if "intent" not in body:
        raise BadRequest(
            "missing_intent", "no intent: give it in the message ('intent') or as the message attribute 'intent'"
        )
    try:
        schemas.validate(ENVELOPE_SCHEMA, body)
    except SchemaViolation as e:
        raise BadRequest("invalid_envelope", f"invalid message: {e}", details=e.problems) from None

    expires_at = _timestamp(body["expiresAt"], "expiresAt") if "expiresAt" in body else None
    schedule = body.get("schedule")
    key = body.get("idempotencyKey")
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
    )


def to_request(delivery: Delivery, schemas: Schemas, schedule_zone: ZoneInfo) -> Request:
    try:
        envelope = decode(delivery, schemas, schedule_zone)
    except BadRequest as problem:
        return Request(delivery=delivery, envelope=None, request_id=delivery.message_id, problem=problem)
    return Request(delivery=delivery, envelope=envelope, request_id=envelope.idempotency_key or delivery.message_id)


def _json_body(data: bytes, has_intent_attribute: bool) -> Any:
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
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRequest(
            "invalid_json", f"the message is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None


def _timestamp(value: str, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("invalid_envelope", f"{name}: {value!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise BadRequest("invalid_envelope", f"{name}: {value!r} has no time zone (add Z or an offset)")
    return parsed
