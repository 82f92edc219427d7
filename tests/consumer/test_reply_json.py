"""A reply is encoded once, and the claim, the activity record and the topic carry the same text."""

from __future__ import annotations

import datetime as dt
import json

from consumer.reply_json import ReplyJson


def test_the_text_is_the_reply_and_the_result_text_its_result() -> None:
    when = dt.datetime(2026, 11, 30, 15, 0, tzinfo=dt.UTC)
    reply = {"requestId": "r-1", "status": "ok", "result": {"at": when, "symbols": ["SPY", "ÄBC"], "n": 1.5}, "x": 1}
    encoded = ReplyJson.of(reply)
    assert json.loads(encoded.text) == {**reply, "result": {"at": str(when), "symbols": ["SPY", "ÄBC"], "n": 1.5}}
    assert encoded.result_text is not None
    assert json.loads(encoded.result_text) == json.loads(encoded.text)["result"]
    assert encoded.text.isascii()  # its length is its size in bytes, which the stored-reply bound relies on


def test_a_reply_without_a_result() -> None:
    for reply in ({"requestId": "r-2", "status": "error", "result": None}, {"requestId": "r-3", "status": "error"}):
        encoded = ReplyJson.of(reply)
        assert json.loads(encoded.text) == reply
        assert encoded.result_text is None


def test_an_empty_result_is_a_result() -> None:
    encoded = ReplyJson.of({"requestId": "r-4", "status": "ok", "result": {}})
    assert json.loads(encoded.text) == {"requestId": "r-4", "status": "ok", "result": {}}
    assert encoded.result_text == "{}"
