"""Replies as an operator reads them: one headline, then one line per instrument or currency."""

from __future__ import annotations

import json

from consumer.console import reply_details, reply_line

BASE = {"status": "ok", "durationMs": 12.34, "tradingMode": "paper", "finishedAt": "2026-11-26T01:00:00+00:00"}


def test_headline_carries_intent_status_duration_mode_and_request():
    line = reply_line({**BASE, "intent": "summary", "requestId": "r-1", "dryRun": True, "duplicate": True})
    assert line.split()[1:] == ["summary", "ok", "12.3", "ms", "paper", "r-1", "[dry-run", "duplicate]"]


def test_headline_names_the_account_that_answered():
    line = reply_line({**BASE, "intent": "ping", "requestId": "r-2", "account": "U7654321", "duplicate": True})
    assert line.split()[5:] == ["paper", "r-2", "account", "U7654321", "[duplicate]"]


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
    assert lines[13] == '    account="DU1"  orders=(sent=1)'


def test_cancelled_and_kept_working_orders_get_a_line_each():
    result = {"instruments": [], "orders": {"sent": 0},
              "cancelled": [{"orderRef": "alloc-1-SPY", "instrument": "SPY", "quantity": 50, "status": "Cancelled",
                             "filled": 0.0, "reason": "close-all"}],
              "kept": [{"orderRef": "by-hand", "instrument": "SPY", "quantity": -5, "reason": "not ours"}]}  # fmt: skip
    lines = reply_details({**BASE, "intent": "close-all", "requestId": "1", "result": result})
    assert lines[0].split() == ["cancelled", "SPY", "+50", "Cancelled", "filled", "0", "alloc-1-SPY", "(close-all)"]
    assert lines[1].split() == ["kept", "SPY", "-5", "filled", "0", "by-hand", "(not", "ours)"]
    assert lines[2] == "    instruments=0  orders=(sent=0)"


def test_a_mapping_shows_its_counts_and_values_not_its_size():
    """Issue 19: a 41-order rebalance printed `orders={2}` (an object with two keys)."""
    result = {
        "orders": {"sent": 41, "filled": 40, "working": 1},
        "strategies": {"dummy": {"status": "ok", "capital": 0.3},
                       "spymacdvixy": {"status": "skipped", "reason": "no bars"}},
        "prices": {f"S{i}": 100.0 + i for i in range(41)},
    }  # fmt: skip
    lines = reply_details({**BASE, "intent": "allocation", "requestId": "1", "result": result})
    text = "\n".join(lines)
    assert "orders=(sent=41, filled=40, working=1)" in text
    assert "strategies=(dummy=ok, spymacdvixy=skipped (no bars))" in text
    assert "prices=(S0=100, S1=101, S2=102, S3=103, S4=104, S5=105, S6=106, S7=107, +33 more)" in text


def test_a_long_summary_wraps_between_values_never_inside_one():
    """Issue 19: the ping line was cut mid-word."""
    result = {
        "connected": True, "state": "connected", "host": "127.0.0.1", "port": 4002, "clientId": 1,
        "connections": 1, "gatewayTime": "2026-06-17T15:00:02+00:00", "roundTripMs": 6.205, "serverVersion": 176,
    }  # fmt: skip
    lines = reply_details({**BASE, "intent": "ping", "requestId": "1", "result": result})
    assert len(lines) > 1
    parts = [part for line in lines for part in line.split()]
    assert parts == [f"{k}={json.dumps(v)}" for k, v in result.items()]
    assert all(len(line) <= 114 for line in lines)
