"""Replies and dead letters out to Pub/Sub, published from the broker loop.

A reply is what a request waits for, published once it is stored: with Pub/Sub's asyncio client, on the loop that
built it, one request per reply. The batching client hands each message to its own threads and back (7-20 ms for a
100 kB summary on a busy consumer, 4 ms alone, against 2 ms); batching buys nothing for one message at a time.
The batching client stays for the delivery watch's probes, which come from its own thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)
import grpc
from google.cloud.pubsub_v1.types import BatchSettings
from google.pubsub_v1 import PublisherAsyncClient, PubsubMessage
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

from consumer.envelope import Delivery
from consumer.reply_json import ReplyJson
from consumer.schemas import Schemas

REPLY_SCHEMA = "reply.schema.json"
DEAD_LETTER_SCHEMA = "dead-letter-attributes.schema.json"


def make_publisher() -> pubsub_v1.PublisherClient:
    """The batching, thread-safe client: for publishing from a thread that is not the broker loop."""
    # The default 10 ms batching window would be pure added latency for a probe someone is timing.
    return pubsub_v1.PublisherClient(batch_settings=BatchSettings(max_messages=100, max_latency=0.001))


def make_reply_client() -> PublisherAsyncClient:
    """The asyncio client `Publishing` uses; call it on the broker loop (grpc.aio channels belong to their loop).
    Against the emulator (PUBSUB_EMULATOR_HOST), which only the batching client finds by itself, a plain channel."""
    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if emulator:
        channel = grpc.aio.insecure_channel(emulator)
        return PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
    return PublisherAsyncClient()


class Publishing:
    """Replies and dead letters out to Pub/Sub, awaited from the broker loop.

    `reply` validates the reply against schemas/reply.schema.json (a mismatch is our bug) and publishes it with the
    attributes subscribers filter on; `dead_letter` republishes a message that cannot be answered, unchanged, with
    why and how often in its attributes. Both return the message id once Pub/Sub has it.
    """

    def __init__(
        self,
        client: PublisherAsyncClient,
        project: str,
        reply_topic: str,
        dead_letter_topic: str,
        subscription: str,
        schemas: Schemas,
    ) -> None:
        self._client = client
        self._reply_topic = client.topic_path(project, reply_topic)
        self._dead_letter_topic = client.topic_path(project, dead_letter_topic)
        self._subscription = subscription
        self._schemas = schemas

    async def reply(self, encoded: ReplyJson) -> str:
        reply = encoded.reply
        # Our own replies are checked against the schema monitors rely on: a mismatch is a bug worth failing loudly.
        self._schemas.validate(REPLY_SCHEMA, reply, where="reply")
        data = encoded.text.encode()
        attributes = {
            "intent": reply["intent"] or "",
            "status": reply["status"],
            "requestId": reply["requestId"],
            "messageId": reply["messageId"],
            **({"alert": "true"} if reply.get("alert") else {}),
        }
        return await self._publish(self._reply_topic, data, attributes)

    async def dead_letter(self, delivery: Delivery, code: str, error: str) -> str:
        """The original message, unchanged, with why it failed and how often in its attributes. Pub/Sub takes 100
        attributes a message: with ours, the original's first ones that fit (the count left out is said)."""
        original = [(k, v) for k, v in delivery.attributes.items() if not k.startswith("deadLetter")]
        kept = original[: MAX_ATTRIBUTES - len(DEAD_LETTER_ATTRIBUTES)]
        attributes = {
            **dict(kept),
            **({"deadLetterAttributesDropped": str(len(original) - len(kept))} if len(kept) < len(original) else {}),
            "deadLetterCode": code,
            "deadLetterError": error[:1000],
            "deadLetterAttempts": str(delivery.delivery_attempt or 0),
            "deadLetterMessageId": delivery.message_id,
            "deadLetterSubscription": self._subscription,
        }
        self._schemas.validate(DEAD_LETTER_SCHEMA, attributes, where="attributes")
        return await self._publish(self._dead_letter_topic, delivery.data, attributes)

    async def _publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
        # The client's default retry (transient codes, up to 60 s), as the batching client's commit had.
        message = PubsubMessage(data=data, attributes=fitted(attributes))
        response = await self._client.publish(topic=topic, messages=[message])
        return str(response.message_ids[0])

    async def close(self) -> None:
        await self._client.transport.close()


# Pub/Sub refuses a message with an attribute value over 1,024 bytes (the emulator does not): a request id of 500
# three-byte characters (the envelope allows 500) or a long error would make a reply that can never be published.
MAX_ATTRIBUTE_BYTES = 1024
# Pub/Sub's limit on attributes per message (the emulator does not check it either); the dead letter adds these.
MAX_ATTRIBUTES = 100
DEAD_LETTER_ATTRIBUTES = ("deadLetterCode", "deadLetterError", "deadLetterAttempts", "deadLetterMessageId",
                          "deadLetterSubscription", "deadLetterAttributesDropped")  # fmt: skip


def fitted(attributes: Mapping[str, str]) -> dict[str, str]:
    """The attributes with each value cut to what Pub/Sub takes, at a character boundary (the data keeps it whole)."""
    return {k: v.encode()[:MAX_ATTRIBUTE_BYTES].decode(errors="ignore") for k, v in attributes.items()}
