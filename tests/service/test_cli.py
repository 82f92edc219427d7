"""The operator's CLI, run as a real process against the emulators and a running consumer (issue: operating it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from consumer.devstack.emulators import free_port
from tests.support import Bus, write_config


def cli(project: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": project}
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def served(consumer_factory, project: str) -> int:
    port = free_port()
    consumer_factory(health_port=port)
    write_config(project)
    return port


def test_publish_wait_prints_the_reply(served, bus: Bus, project: str):
    done = cli(project, "publish", "summary", "--wait")
    assert done.returncode == 0, done.stderr
    assert "published summary as message" in done.stderr
    first = done.stdout.splitlines()[0]
    assert "summary" in first
    assert " ok " in first
    message_id = done.stderr.split("as message ")[1].split()[0]
    assert bus.reply_to(message_id)["status"] == "ok"


def test_publish_with_params_and_dry_run_as_json(served, project: str):
    done = cli(
        project, "publish", "allocation", "-p", 'strategies=["dummy"]', "-p", "strategyParams.dummy.weights.SPY=0.1",
        "--dry-run", "--wait", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    reply = json.loads(done.stdout)
    assert reply["intent"] == "allocation"
    assert reply["dryRun"] is True
    assert reply["result"]["instruments"][0]["instrument"] == "SPY"


def test_a_bad_param_is_caught_before_publishing(served, bus: Bus, project: str):
    done = cli(project, "publish", "reconcile", "-p", "fix=maybe")
    assert done.returncode == 2
    assert "params.fix: 'maybe' is not of type 'boolean'" in done.stderr
    unknown = cli(project, "publish", "teleport")
    assert unknown.returncode == 2
    assert "unknown intent 'teleport'" in unknown.stderr
    assert bus.settle(quiet=1.0) == []  # nothing reached the topic


def test_replies_filters_by_intent_and_status(served, bus: Bus, project: str):
    cli(project, "replies")  # creates the CLI's subscription; replies from now on are kept for it
    bus.reply_to(bus.publish({"intent": "ping"}))
    bus.reply_to(bus.publish(b"not json"))
    errors = cli(project, "replies", "--status", "error", "--json")
    assert errors.returncode == 0, errors.stderr
    lines = [json.loads(line) for line in errors.stdout.splitlines()]
    assert [(r["status"], r["error"]["code"]) for r in lines] == [("error", "invalid_json")]
    bus.reply_to(bus.publish({"intent": "ping"}))
    readable = cli(project, "replies", "--intent", "ping")
    assert readable.stdout.count("ping") == 1
    assert " ok " in readable.stdout


def test_status_shows_gateway_kill_switch_and_last_runs(served, bus: Bus, project: str):
    bus.reply_to(bus.publish({"intent": "summary"}))
    done = cli(project, "status", "--health-url", f"http://127.0.0.1:{served}")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ready: gateway connected, pulling" in out
    assert "trading ENABLED" in out
    assert any(line.split()[:2] == ["summary", "ok"] for line in out.splitlines())


def test_a_bad_setting_fails_at_start_naming_the_variable(project: str):
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": project, "IB_PORT": "forty"}
    done = subprocess.run([sys.executable, "-m", "consumer", "serve"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "IB_PORT='forty'" in done.stderr


def test_health_endpoints_and_metrics(served, bus: Bus):
    import urllib.request

    bus.reply_to(bus.publish({"intent": "summary"}))
    bus.reply_to(bus.publish(b"{"))
    base = f"http://127.0.0.1:{served}"
    with urllib.request.urlopen(f"{base}/livez", timeout=5) as live:
        assert json.loads(live.read())["loop"] == "responsive"
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as ready:
        assert ready.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        metrics = json.loads(response.read())
    assert metrics["counters"]["intents"]["summary:ok"] == 1
    assert metrics["counters"]["intents"]["(none):error"] == 1
    assert metrics["counters"]["gatewayConnects"][""] == 1
    assert metrics["intentLatency"]["summary"]["count"] == 1
