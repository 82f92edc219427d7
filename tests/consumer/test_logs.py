"""Log lines: Cloud Logging's JSON shape off a terminal, with the request's id, intent and trading mode."""

from __future__ import annotations

import io
import json
import logging

import structlog

from consumer.logs import configure, get_logger


def test_json_lines_carry_severity_message_and_the_bound_request():
    stream = io.StringIO()
    configure("json", "INFO", stream=stream)
    try:
        with structlog.contextvars.bound_contextvars(requestId="r-1", intent="summary", tradingMode="paper"):
            get_logger("test").warning("intent finished", durationMs=12.5)
            logging.getLogger("ib_insync.wrapper").error("Error 201, reqId 7: rejected")
    finally:
        configure("console", "INFO")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["severity"] == "WARNING"
    assert first["message"] == "intent finished"
    assert (first["requestId"], first["intent"], first["tradingMode"], first["durationMs"]) == (
        "r-1", "summary", "paper", 12.5,
    )  # fmt: skip
    assert second["severity"] == "ERROR"
    assert second["requestId"] == "r-1"  # a library's line inside the request carries it too
