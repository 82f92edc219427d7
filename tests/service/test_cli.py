"""The operator's CLI, run as a real process against the emulators and a running consumer (issue: operating it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from consumer.devstack.emulators import free_port
from tests.support import Bus, firestore_client, mode_collection, wait_for, write_config


def cli(project: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOOGLE_CLOUD_PROJECT": project}
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# The replies are there before the command runs (each test waits for them), so an empty pull may end it quickly.
QUICK = ("--pull-timeout", "1")


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
    cli(project, "replies", *QUICK)  # creates the CLI's subscription; replies from now on are kept for it
    bus.reply_to(bus.publish({"intent": "ping"}))
    bus.reply_to(bus.publish(b"not json"))
    errors = cli(project, "replies", "--status", "error", "--json", *QUICK)
    assert errors.returncode == 0, errors.stderr
    lines = [json.loads(line) for line in errors.stdout.splitlines()]
    assert [(r["status"], r["error"]["code"]) for r in lines] == [("error", "invalid_json")]
    bus.reply_to(bus.publish({"intent": "ping"}))
    readable = cli(project, "replies", "--intent", "ping", *QUICK)
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


def hold_by_hand(project: str, bus: Bus, gateway, strategy: str, symbol: str, quantity: float) -> None:
    """A strategy's holding without its signal: the broker's position and the strategy's book, set to agree."""
    gateway.set_position(symbol, quantity)
    positions = bus.reply_to(bus.publish({"intent": "summary"}))["result"]["positions"]
    position = next(p for p in positions if p["symbol"] == symbol)
    instrument = {k: position[k] for k in ("conId", "symbol", "secType", "currency", "exchange")}
    firestore_client(project).collection("tradingModes").document("paper").collection("holdings").document(
        strategy
    ).set({"strategy": strategy, "positions": {str(position["conId"]): {**instrument, "multiplier": 1.0,
                                                                         "quantity": quantity}}})  # fmt: skip


def test_a_scheduled_job_fired_by_hand_honours_dry_run_pause_and_the_slot(served, bus: Bus, gateway, project: str):
    """Issue 12, bug 6: `--schedule eod-close-all --dry-run` sold SPY, used up the slot and ignored `paused`."""
    hold_by_hand(project, bus, gateway, "testsignalgenerator", "SPY", 10)
    replies_before = len(bus.settle(quiet=0.5))

    paused = cli(project, "publish", "--schedule", "eod-close-all", "--dry-run", "--wait")
    assert paused.returncode == 2
    assert paused.stderr.strip().splitlines() == [
        "consumer publish: job 'eod-close-all' is paused in infra/schedules.yaml; not published (--force fires it)"
    ]

    dry = cli(project, "publish", "--schedule", "eod-close-all", "--dry-run", "--force", "--wait", "--json")
    assert dry.returncode == 0, dry.stderr + dry.stdout
    reply = json.loads(dry.stdout)
    assert (reply["status"], reply["dryRun"], reply["schedule"]) == ("ok", True, "eod-close-all")
    assert reply["requestId"].startswith("manual:eod-close-all:")
    assert [(i["instrument"], i["order"]) for i in reply["result"]["instruments"]] == [("SPY", -10)]
    assert gateway.orders() == []
    assert gateway.positions()["SPY"] == 10
    assert len(bus.settle(quiet=0.5)) == replies_before + 1  # the paused attempt published nothing

    # Cloud Scheduler's own firing of the slot (ignoreMarketHours added so the test runs at any hour).
    scheduled = bus.reply_to(
        bus.publish(
            {"intent": "close-all", "params": {"strategies": ["testsignalgenerator"]}, "maxAgeSeconds": 240,
             "ignoreMarketHours": True},
            intent="close-all", schedule="eod-close-all",
        )
    )  # fmt: skip
    assert scheduled["status"] == "ok", scheduled
    assert not scheduled.get("duplicate")
    assert scheduled["requestId"].startswith("schedule:eod-close-all:")
    ref = scheduled["result"]["instruments"][0]["orderRef"]
    assert [(o["orderRef"], o["action"], o["totalQuantity"]) for o in gateway.orders()] == [(ref, "SELL", 10)]
    assert gateway.positions().get("SPY", 0) == 0
    exec_ids = {e["execId"] for e in gateway.executions() if e["orderRef"] == ref}
    assert exec_ids
    wait_for(lambda: exec_ids <= {f["execId"] for f in mode_collection(project, "fills")}, what="the sale booked")

    # Standing in for the slot is asked for by name; this slot already ran, so it is answered from the stored reply.
    again = cli(project, "publish", "--schedule", "eod-close-all", "--as-scheduled", "--force", "--wait", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["duplicate"] is True
    assert len(gateway.orders()) == 1
