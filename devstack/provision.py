"""Builds the Pub/Sub topology on the emulator from infra/pubsub.yaml, the declaration Terraform also reads.

Idempotent: existing topics and subscriptions are left as they are, so `make run` can be restarted against
running emulators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
import yaml
from google.api_core import exceptions
from google.protobuf import duration_pb2

from consumer.data import PUBSUB_DECLARATION


@dataclass(frozen=True)
class Topology:
    """The Pub/Sub topics and subscriptions of infra/pubsub.yaml (`load`), as the emulator is provisioned with them."""

    topics: dict[str, dict[str, Any]]
    subscriptions: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path = PUBSUB_DECLARATION) -> Topology:
        data = yaml.safe_load(path.read_text())
        return cls(topics=dict(data["topics"]), subscriptions=dict(data["subscriptions"]))


@dataclass
class Overrides:
    """Local-only changes: tests want redelivery in a second, not after the cloud's 10 s minimum backoff."""

    minimum_backoff_seconds: float | None = None
    maximum_backoff_seconds: float | None = None
    ack_deadline_seconds: int | None = None
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)


def subscription_request(
    project: str, name: str, spec: dict[str, Any], overrides: Overrides | None = None
) -> dict[str, Any]:
    """The CreateSubscription request for one declared subscription."""
    o = overrides or Overrides()
    spec = {**spec, **o.subscriptions.get(name, {})}
    request: dict[str, Any] = {
        "name": f"projects/{project}/subscriptions/{name}",
        "topic": f"projects/{project}/topics/{spec['topic']}",
        "ack_deadline_seconds": o.ack_deadline_seconds or spec.get("ackDeadlineSeconds", 60),
    }
    if "messageRetentionSeconds" in spec:
        request["message_retention_duration"] = duration_pb2.Duration(seconds=spec["messageRetentionSeconds"])
    retry = spec.get("retryPolicy")
    if retry:
        low = o.minimum_backoff_seconds if o.minimum_backoff_seconds is not None else retry["minimumBackoffSeconds"]
        high = o.maximum_backoff_seconds if o.maximum_backoff_seconds is not None else retry["maximumBackoffSeconds"]
        request["retry_policy"] = {"minimum_backoff": _duration(low), "maximum_backoff": _duration(high)}
    dead_letter = spec.get("deadLetter")
    if dead_letter:
        request["dead_letter_policy"] = {
            "dead_letter_topic": f"projects/{project}/topics/{dead_letter['topic']}",
            "max_delivery_attempts": dead_letter["maxDeliveryAttempts"],
        }
    if spec.get("exactlyOnceDelivery"):
        request["enable_exactly_once_delivery"] = True
    return request


def provision(project: str, topology: Topology | None = None, overrides: Overrides | None = None) -> list[str]:
    """Creates what is missing; returns the resource names created. Needs PUBSUB_EMULATOR_HOST or credentials."""
    topology = topology or Topology.load()
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    created: list[str] = []
    try:
        for topic in topology.topics:
            path = publisher.topic_path(project, topic)
            try:
                publisher.create_topic(name=path)
                created.append(path)
            except exceptions.AlreadyExists:
                pass
        for name, spec in topology.subscriptions.items():
            request = subscription_request(project, name, spec, overrides)
            try:
                subscriber.create_subscription(request=request)
                created.append(request["name"])
            except exceptions.AlreadyExists:
                pass
    finally:
        subscriber.close()
        publisher.transport.close()
    return created


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))
