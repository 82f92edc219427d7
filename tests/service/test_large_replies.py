"""A reply larger than a Firestore document (1 MiB) is still answered once, stored bounded for its duplicates."""

from __future__ import annotations

import json

import pytest

from tests.support import TEST_ACCOUNT, Bus, mode_collection

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

    (claim,) = [c for c in mode_collection(project, "requests") if c["reply"]["messageId"] == first]
    assert claim["state"] == "done"
    assert claim["runs"] == 1
    assert claim["reply"]["resultTruncated"] is True
    assert claim["reply"]["result"]["truncated"] is True
    assert claim["reply"]["status"] == "ok"

    again = bus.publish({"intent": "summary", "idempotencyKey": "big-summary"})
    duplicate = bus.reply_to(again, timeout=90)
    assert duplicate["duplicate"] is True
    assert duplicate["resultTruncated"] is True
    assert duplicate["requestId"] == reply["requestId"]
    assert bus.replies_to(first) == [reply]  # one reply to the first message, none repeated
