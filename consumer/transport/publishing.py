"""Replies and dead letters out to Pub/Sub, awaited from the broker loop.

The google-cloud-pubsub publisher is thread-safe and batches in its own threads; its futures are wrapped so the
broker loop can await them without blocking.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
from google.cloud.pubsub_v1.types import BatchSettings

from consumer.envelope import Delivery
from consumer.schemas import Schemas

REPLY_SCHEMA = "reply.schema.json"
DEAD_LETTER_SCHEMA = "dead-letter-attributes.schema.json"


def make_publisher() -> pubsub_v1.PublisherClient:
    # A reply is one small message that someone is waiting for; the default 10 ms batching window would be
    # pure added latency.
    return pubsub_v1.PublisherClient(batch_settings=BatchSettings(max_messages=100, max_latency=0.001))


class Publishing:
    """Replies and dead letters out to Pub/Sub, awaited from the broker loop.

    `reply` validates the reply against schemas/reply.schema.json (a mismatch is our bug) and publishes it with the
    attributes subscribers filter on; `dead_letter` republishes a message that cannot be answered, unchanged, with
    why and how often in its attributes. Both return the message id once Pub/Sub has it.
    """

    def __init__(
        self,
        publisher: pubsub_v1.PublisherClient,
        project: str,
        reply_topic: str,
        dead_letter_topic: str,
        subscription: str,
        schemas: Schemas,
    ) -> None:
        self._publisher = publisher
        self._reply_topic = publisher.topic_path(project, reply_topic)
        self._dead_letter_topic = publisher.topic_path(project, dead_letter_topic)
        self._subscription = subscription
        self._schemas = schemas

    async def reply(self, reply: dict[str, Any]) -> str:
        # Our own replies are checked against the schema monitors rely on: a mismatch is a bug worth failing loudly.
        self._schemas.validate(REPLY_SCHEMA, reply, where="reply")
        future = self._publisher.publish(
            self._reply_topic,
            json.dumps(reply, separators=(",", ":"), default=str).encode(),
            intent=reply["intent"] or "",
            status=reply["status"],
            requestId=reply["requestId"],
            messageId=reply["messageId"],
            **({"alert": "true"} if reply.get("alert") else {}),
        )
        return await asyncio.wrap_future(future)

    async def dead_letter(self, delivery: Delivery, code: str, error: str) -> str:
        """The original message, unchanged, with why it failed and how often in its attributes."""
        attributes = {
            **{k: v for k, v in delivery.attributes.items() if not k.startswith("deadLetter")},
            "deadLetterCode": code,
            "deadLetterError": error[:1000],
            "deadLetterAttempts": str(delivery.delivery_attempt or 0),
            "deadLetterMessageId": delivery.message_id,
            "deadLetterSubscription": self._subscription,
        }
        self._schemas.validate(DEAD_LETTER_SCHEMA, attributes, where="attributes")
        future = self._publisher.publish(self._dead_letter_topic, delivery.data, **attributes)
        return await asyncio.wrap_future(future)
