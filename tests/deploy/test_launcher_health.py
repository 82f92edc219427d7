"""The HEALTHCHECK against a real TCP listener (the gateway's API port) and a real HTTP server (the consumer)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from launcher import health

REPO = Path(__file__).resolve().parents[2]


class Consumer:
    """A stand-in for the consumer's health server, with switchable answers."""

    def __init__(self) -> None:
        self.live, self.ready = 200, 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = {"/livez": outer.live, "/readyz": outer.ready}.get(self.path, 404)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    c = Consumer()
    yield c
    c.close()


@pytest.fixture
def gateway() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthy_when_the_port_accepts_and_livez_answers(tmp_path, consumer, gateway) -> None:
    consumer.ready = 503  # not ready (e.g. reconnecting) does not fail the check
    report = health.check(gateway.getsockname()[1], consumer.port, health.DownSince(tmp_path / "h.json"))
    assert report.healthy, report.reasons
    assert (report.gateway_accepting, report.consumer_live, report.consumer_ready) == (True, True, False)


def test_a_closed_gateway_port_is_forgiven_for_the_grace(tmp_path, consumer) -> None:
    state = health.DownSince(tmp_path / "h.json")
    port = free_port()
    now = [1000.0]
    first = health.check(port, consumer.port, state, grace=600, clock=lambda: now[0])
    assert first.healthy
    assert not first.gateway_accepting
    assert first.gateway_down_for == 0
    now[0] += 300  # the nightly restart takes a few minutes
    assert health.check(port, consumer.port, state, grace=600, clock=lambda: now[0]).healthy
    now[0] += 301
    late = health.check(port, consumer.port, state, grace=600, clock=lambda: now[0])
    assert not late.healthy
    assert late.gateway_down_for == 601
    assert "closed for 601s" in late.reasons[0]


def test_the_grace_restarts_once_the_port_is_back(tmp_path, consumer) -> None:
    state = health.DownSince(tmp_path / "h.json")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    health.check(port, consumer.port, state, clock=lambda: 1000.0)
    assert state.read() == 1000.0
    listener.listen()
    try:
        assert health.check(port, consumer.port, state, clock=lambda: 5000.0).healthy
        assert state.read() is None
    finally:
        listener.close()


def test_unhealthy_when_the_consumer_is_not_live(tmp_path, consumer, gateway) -> None:
    consumer.live = 503
    report = health.check(gateway.getsockname()[1], consumer.port, health.DownSince(tmp_path / "h.json"))
    assert not report.healthy
    assert report.consumer_live is False
    assert report.consumer_ready is None
    assert "/livez" in report.reasons[0]


def test_unhealthy_when_nothing_answers_on_the_health_port(tmp_path, gateway) -> None:
    report = health.check(gateway.getsockname()[1], free_port(), health.DownSince(tmp_path / "h.json"), timeout=1)
    assert not report.healthy


def test_a_corrupt_state_file_is_treated_as_no_state(tmp_path) -> None:
    (tmp_path / "h.json").write_text("{not json")
    assert health.DownSince(tmp_path / "h.json").read() is None


def test_the_healthcheck_command(tmp_path, consumer) -> None:
    """`python -m launcher health` as Docker runs it: exit code and one JSON line."""
    try:
        gateway = socket.create_server(("127.0.0.1", 4002))  # the paper API port, as the command derives it
    except OSError:
        pytest.skip("port 4002 is taken here (a local gateway or simulator is running)")
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "gateway-image"),
            "TRADING_MODE": "paper",
            "HEALTH_PORT": str(consumer.port),
            "LAUNCHER_STATE_DIR": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "health"], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["healthy"] is True
        consumer.live = 500
        done = subprocess.run(
            [sys.executable, "-m", "launcher", "health"], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1
        assert json.loads(done.stdout)["consumer_live"] is False
    finally:
        gateway.close()
