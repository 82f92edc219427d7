"""Replies as an operator reads them: one headline, then one line per instrument or currency."""

from __future__ import annotations

from consumer.console import reply_details, reply_line

BASE = {"status": "ok", "durationMs": 12.34, "tradingMode": "paper", "finishedAt": "2026-11-26T01:00:00+00:00"}


def test_headline_carries_intent_status_duration_mode_and_request():
    line = reply_line({**BASE, "intent": "summary", "requestId": "r-1", "dryRun": True, "duplicate": True})
    assert line.split()[1:] == ["summary", "ok", "12.3", "ms", "paper", "r-1", "[dry-run", "duplicate]"]


def test_an_error_shows_its_code_and_message():
    reply = {**BASE, "intent": None, "status": "error", "requestId": "9",
             "error": {"code": "invalid_json", "message": "not JSON"}}  # fmt: skip
    assert " - " in reply_line(reply)
    assert reply_details(reply) == ["    invalid_json: not JSON"]


def test_allocation_lists_each_instrument_then_the_rest():
    result = {"account": "DU1", "orders": {"sent": 1},
              "instruments": [{"instrument": f"S{i}", "target": i, "current": 0, "order": i, "outcome": "filled",
                               "orderRef": f"r{i}"} for i in range(15)]}  # fmt: skip
    lines = reply_details({**BASE, "intent": "allocation", "requestId": "1", "result": result}, limit=12)
    assert lines[0].split() == ["S0", "target", "0", "current", "0", "order", "+0", "filled", "r0"]
    assert lines[12] == "    ... and 3 more"
    assert lines[13] == '    account="DU1" orders={1}'


def test_cancelled_and_kept_working_orders_get_a_line_each():
    result = {"instruments": [], "orders": {"sent": 0},
              "cancelled": [{"orderRef": "alloc-1-SPY", "instrument": "SPY", "quantity": 50, "status": "Cancelled",
                             "filled": 0.0, "reason": "close-all"}],
              "kept": [{"orderRef": "by-hand", "instrument": "SPY", "quantity": -5, "reason": "not ours"}]}  # fmt: skip
    lines = reply_details({**BASE, "intent": "close-all", "requestId": "1", "result": result})
    assert lines[0].split() == ["cancelled", "SPY", "+50", "Cancelled", "filled", "0", "alloc-1-SPY", "(close-all)"]
    assert lines[1].split() == ["kept", "SPY", "-5", "filled", "0", "by-hand", "(not", "ours)"]
    assert lines[2] == "    instruments=0 orders={1}"
