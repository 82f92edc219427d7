"""A stream that stops delivering without an error: readiness notices it through a self-published probe."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.emulators import EmulatorPair, free_port
from tests.shared_emulators import private_emulators
from tests.support import Bus, wait_for


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorPair]:
    """A pair of this module's own: the test freezes Pub/Sub, which would stall every test sharing the run's pair."""
    with private_emulators(tmp_path_factory.mktemp("frozen-emulators")) as pair:
        yield pair


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.timeout(180)
def test_readiness_fails_while_delivery_is_stalled_and_recovers_after(consumer_factory, bus: Bus, emulators):
    port = free_port()
    consumer_factory(health_port=port, delivery_probe=0.5)
    wait_for(lambda: readyz(port)[0] == 200, what="ready")
    assert bus.reply_to(bus.publish({"intent": "ping"}))["status"] == "ok"

    group = os.getpgid(emulators.pubsub.process.pid)
    os.killpg(group, signal.SIGSTOP)  # the emulator stops answering; sockets stay open, no error reaches anyone
    try:
        _, body = wait_for(lambda: (r := readyz(port))[0] == 503 and r, timeout=30, what="readiness to fail")
        assert body["delivery"].startswith("stalled: a probe published")
        assert body["gateway"] == "connected"  # everything else still looks healthy
    finally:
        os.killpg(group, signal.SIGCONT)
    wait_for(lambda: readyz(port)[0] == 200, timeout=90, what="readiness to come back once delivery resumes")
    assert bus.reply_to(bus.publish({"intent": "ping"}), timeout=60)["status"] == "ok"
    probes = [r for r in bus.settle(quiet=2.0) if r.get("intent") is None]
    assert probes == [], "a delivery probe was answered like an intent"
