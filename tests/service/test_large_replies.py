"""Replies as stored for duplicates: JSON text with the claim and the activity record, bounded when larger than a
Firestore document (1 MiB), and read back from a claim settled before they were text."""

from __future__ import annotations

import json

import pytest
from google.cloud import firestore

from consumer.store.encoding import firestore_safe
from tests.support import TEST_ACCOUNT, Bus, activity, mode_collection, mode_document, wait_for

pytestmark = pytest.mark.usefixtures("consumer")

MANY = 2500  # about 1.5 MB of summary: positions and portfolio rows for each
BIG_ACCOUNT = {
    "generated": {"count": MANY, "prefix": "SYM"},
    "accounts": [
        {
            "id": TEST_ACCOUNT,
            "cash": {"USD": 1_000_000},
            "positions": [{"symbol": f"SYM{n:04d}", "quantity": 10} for n in range(MANY)],
        }
    ],
}


@pytest.mark.parametrize("gateway_scenario", [BIG_ACCOUNT])
def test_a_reply_too_large_for_a_document_is_answered_once_and_its_duplicate_is_marked(bus: Bus, gateway, project):
    """Before: the claim stored the whole reply. Firestore refuses a document over 1 MiB (the emulator does not
    enforce the limit, so this test checks what is stored): every settle would fail and the message be nacked until
    its last delivery."""
    first = bus.publish({"intent": "summary", "idempotencyKey": "big-summary"})
    reply = bus.reply_to(first, timeout=90)
    assert reply["status"] == "ok", reply.get("error")
    assert len(reply["result"]["positions"]) == MANY
    assert len(json.dumps(reply)) > 1_048_576
    assert "resultTruncated" not in reply

    claims = [(c, json.loads(c["replyJson"])) for c in mode_collection(project, "requests")]
    ((claim, stored),) = [(c, r) for c, r in claims if r["messageId"] == first]
    assert claim["state"] == "done"
    assert claim["runs"] == 1
    assert stored["resultTruncated"] is True
    assert stored["result"]["truncated"] is True
    assert stored["status"] == "ok"

    again = bus.publish({"intent": "summary", "idempotencyKey": "big-summary"})
    duplicate = bus.reply_to(again, timeout=90)
    assert duplicate["duplicate"] is True
    assert duplicate["resultTruncated"] is True
    assert duplicate["requestId"] == reply["requestId"]
    assert bus.replies_to(first) == [reply]  # one reply to the first message, none repeated


def test_a_reply_is_stored_as_its_json_text_and_its_duplicate_is_that_reply(bus: Bus, project):
    """Stored as maps, a 100 kB summary cost about 80 ms of client encoding and emulator writes between the reply
    built and the reply published (decision 19): stored as text, the duplicate still gets the reply value for value."""
    first = bus.publish({"intent": "summary", "idempotencyKey": "text-summary"})
    reply = bus.reply_to(first)
    assert reply["status"] == "ok", reply.get("error")

    (claim,) = [c for c in mode_collection(project, "requests") if c["requestId"] == reply["requestId"]]
    assert (claim["state"], "reply" in claim) == ("done", False)
    assert json.loads(claim["replyJson"]) == reply
    (record,) = wait_for(lambda: activity(project, messageId=first), what="the activity record")
    assert json.loads(record["resultJson"]) == reply["result"]
    assert "result" not in record

    duplicate = bus.reply_to(bus.publish({"intent": "summary", "idempotencyKey": "text-summary"}))
    assert duplicate["duplicate"] is True
    assert {k: v for k, v in duplicate.items() if k not in {"messageId", "duplicate"}} == {
        k: v for k, v in reply.items() if k != "messageId"
    }


def test_a_claim_settled_before_replies_were_text_still_answers_its_duplicate(bus: Bus, project):
    """Claims written before the change hold the reply as a map under `reply`: a redelivery of such a request must
    still be answered from it, not nacked until its last attempt for want of `replyJson`."""
    reply = bus.reply_to(bus.publish({"intent": "summary", "idempotencyKey": "legacy-summary"}))
    assert reply["status"] == "ok", reply.get("error")
    (document,) = [
        d for d in mode_document(project).collection("requests").stream() if d.get("requestId") == reply["requestId"]
    ]
    document.reference.update({"reply": firestore_safe(reply), "replyJson": firestore.DELETE_FIELD})

    duplicate = bus.reply_to(bus.publish({"intent": "summary", "idempotencyKey": "legacy-summary"}))
    assert duplicate["duplicate"] is True
    assert duplicate["requestId"] == reply["requestId"]
    assert duplicate["result"] == reply["result"]
