"""The activity log: one Firestore document per intent run, written in the batch that settles the request."""

from __future__ import annotations

import os
import socket
from typing import Any

from google.cloud.firestore import AsyncWriteBatch

from consumer.reply_json import ReplyJson, dumps
from consumer.store.encoding import firestore_safe
from consumer.store.layout import Layout

# A reply can be large (a 200-instrument rebalance); the activity log keeps the outcome and a bounded result.
MAX_RESULT_BYTES = 200_000


def agent_name() -> str:
    """Who ran it: the Cloud Run revision or VM host, and the process."""
    return os.environ.get("K_REVISION") or f"{socket.gethostname()}:{os.getpid()}"


class ActivityLog:
    """The activity collection: `record` adds one document per settled intent run (its reply, params, attempt) to the
    batch that settles the request, so the log and the stored reply are written together or not at all.
    """

    def __init__(self, layout: Layout) -> None:
        self._layout = layout

    def record(self, batch: AsyncWriteBatch, encoded: ReplyJson, params: Any, delivery_attempt: int | None) -> None:
        reply = encoded.reply
        # JSON text, as the claim stores the reply (decision 19); null when the run had no result.
        result_json = encoded.result_text
        if result_json is not None and len(result_json) > MAX_RESULT_BYTES:
            result_json = dumps({"truncated": True, "note": "too large for the activity log; see the reply"})
        batch.set(
            self._layout.activity().document(),
            {
                "requestId": reply["requestId"],
                "messageId": reply["messageId"],
                "intent": reply["intent"],
                "params": firestore_safe(params),
                "dryRun": reply["dryRun"],
                "tradingMode": reply["tradingMode"],
                "account": reply.get("account"),
                "schedule": reply.get("schedule"),
                "status": reply["status"],
                "error": firestore_safe(reply.get("error")),
                "resultJson": result_json,
                "startedAt": reply["startedAt"],
                "finishedAt": reply["finishedAt"],
                "durationMs": reply["durationMs"],
                "deliveryAttempt": delivery_attempt,
                "agent": agent_name(),
            },
        )
