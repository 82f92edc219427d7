"""The consumer end to end: Pub/Sub in, broker loop, Firestore, reply out (issue: the consumer service).

Real emulators, the real ib_insync client against the simulated gateway; the consumer runs in-process on its own
threads, or as a child process where a signal must be real.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from consumer import dispatch
from tests.support import (
    Bus,
    ConsumerProcess,
    activity,
    mode_document,
    signal_another_thread,
    wait_for,
    write_config,
)


def test_summaries_arriving_together_share_one_account_summary_subscription(consumer, bus: Bus, gateway):
    """IB refuses a client's third account-summary subscription (322), and ib_insync subscribes on every call made
    before the first answer: summaries arriving together on a new connection must share one subscription, and each
    reply carries the account's values. The first answer is held back a second, so all six are waiting for it."""
    gateway.stall_request("reqAccountSummary", 1.0)
    ids = [bus.publish({"intent": "summary"}) for _ in range(6)]
    replies = bus.replies_to_all(ids)
    for message_id in ids:
        (reply,) = replies[message_id]
        assert reply["status"] == "ok", reply
        assert reply["result"]["accountValues"]["DU123456"]["NetLiquidation"]["USD"] > 0, reply["result"]
    assert [r for _, r in gateway.requests_received()].count("reqAccountSummary") == 1


def test_summary_from_the_python_client_gets_one_reply_and_one_activity_record(consumer, bus: Bus, project: str):
    message_id = bus.publish({"intent": "summary"})

    replies = bus.replies_to(message_id)
    assert len(replies) == 1
    reply = replies[0]
    assert reply["status"] == "ok", reply
    assert reply["requestId"] == message_id
    assert reply["tradingMode"] == "paper"
    assert reply["dryRun"] is False
    result = reply["result"]
    assert result["accounts"] == ["DU123456"]
    assert result["accountValues"]["DU123456"]["NetLiquidation"]["USD"] > 0
    assert {"positions", "portfolio", "openOrders", "fills"} <= set(result)
    assert reply["startedAt"] <= reply["finishedAt"]
    attributes = bus.reply_attributes[0]
    assert attributes == {"intent": "summary", "status": "ok", "requestId": message_id} | {
        k: v for k, v in attributes.items() if k not in {"intent", "status", "requestId"}
    }
    records = wait_for(lambda: activity(project, messageId=message_id), what="the activity record")
    assert len(records) == 1
    assert records[0]["intent"] == "summary"
    assert records[0]["status"] == "ok"


def test_a_wall_clock_stepped_back_mid_intent_still_gets_its_reply(consumer, bus: Bus, monkeypatch):
    """NTP can step the wall clock back while an intent runs. durationMs was the difference of two wall-clock
    readings: negative, the reply schema (minimum 0) refused it, and every delivery was nacked with no reply. The
    duration is the monotonic clock's; startedAt and finishedAt stay the wall clock's, stepped back as it was."""
    readings = itertools.count()

    class SteppingBack(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) - timedelta(seconds=2 * next(readings))  # 2 s further back at each reading

    monkeypatch.setattr(dispatch, "datetime", SteppingBack)
    message_id = bus.publish({"intent": "summary"})
    (reply,) = bus.replies_to(message_id)
    assert reply["status"] == "ok", reply
    assert reply["durationMs"] >= 0
    assert datetime.fromisoformat(reply["finishedAt"]) < datetime.fromisoformat(reply["startedAt"])
    assert datetime.fromisoformat(reply["startedAt"]).tzinfo == UTC


def test_ib_lives_on_the_broker_loop_and_concurrent_callbacks_never_touch_it(consumer, bus: Bus):
    """The HTTP version's crash (`attached to a different loop`): here, 20 callback threads hand work over and
    every byte of the IB socket is read on the one thread the broker loop runs on."""

    async def current_thread() -> threading.Thread:
        return threading.current_thread()

    broker_thread = consumer.service.loop.submit(current_thread()).result(timeout=10)
    readers: list[threading.Thread] = []
    connection = consumer.service.services.gateway.ib.client.conn  # ib_insync's socket, its hasData is public
    consumer.service.loop.call(connection.hasData.connect, lambda data: readers.append(threading.current_thread()))
    ids = [bus.publish({"intent": "summary"}) for _ in range(20)]
    replies = bus.wait_replies(20)
    assert sorted(r["messageId"] for r in replies) == sorted(ids)
    assert {r["status"] for r in replies} == {"ok"}
    assert readers, "no data read from the IB socket while 20 summaries were answered"
    assert set(readers) == {broker_thread}
    assert broker_thread is not threading.current_thread()


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is checked by preflight")
def test_summary_from_the_gcloud_cli_with_the_intent_as_an_attribute(consumer, bus: Bus, project: str, emulators):
    env = {**os.environ, "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{emulators.pubsub.address}/",
           "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true"}  # fmt: skip
    done = subprocess.run(
        ["gcloud", "pubsub", "topics", "publish", "intents", f"--project={project}", "--message={}",
         "--attribute=intent=summary", "--format=json"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    message_id = json.loads(done.stdout)["messageIds"][0]

    replies = bus.replies_to(message_id)
    assert [r["status"] for r in replies] == ["ok"]
    assert replies[0]["intent"] == "summary"
    assert len(wait_for(lambda: activity(project, messageId=message_id), what="activity")) == 1


BAD_INPUTS = [
    pytest.param(b'{"intent": "summary",', {}, "invalid_json", id="malformed-json"),
    pytest.param(b"\xff\xfe\x00garbage", {}, "not_utf8", id="not-utf8"),
    # Pub/Sub refuses a message with neither data nor attributes; an empty body with an unrelated attribute is
    # the emptiest message there can be.
    pytest.param(b"", {"origin": "test"}, "empty_message", id="empty"),
    pytest.param(b"   ", {}, "empty_message", id="blank"),
    pytest.param(b'{"intent": "teleport"}', {}, "unknown_intent", id="unknown-intent"),
    pytest.param(b'{"intent": "summary", "params": {"verbose": 1}}', {}, "invalid_params", id="bad-params"),
    pytest.param(b'{"intent": "allocation", "params": {"strategies": "dummy"}}', {}, "invalid_params", id="bad-type"),
    pytest.param(b"[1, 2]", {}, "not_an_object", id="not-an-object"),
    pytest.param(b'{"intent": "ping"}', {"intent": "summary"}, "conflicting_intent", id="conflicting-intent"),
]


@pytest.mark.parametrize(("data", "attributes", "code"), BAD_INPUTS)
def test_bad_input_gets_one_error_reply_and_is_acked(consumer, bus: Bus, project: str, data, attributes, code):
    message_id = bus.publish(data, **attributes)
    replies = bus.replies_to(message_id)  # a nacked message would come back and be answered again
    assert len(replies) == 1, replies
    assert replies[0]["status"] == "error"
    assert replies[0]["error"]["code"] == code
    assert replies[0]["error"]["message"]
    assert len(wait_for(lambda: activity(project, messageId=message_id), what="activity")) == 1
    # Still serving.
    assert bus.reply_to(bus.publish({"intent": "ping"}))["status"] == "ok"


def test_sigterm_mid_intent_finishes_it_and_exits_cleanly(bus: Bus, gateway, project: str, tmp_path):
    child = ConsumerProcess(project, gateway.port, tmp_path / "consumer.log", SHUTDOWN_GRACE_SECONDS="30")
    try:
        child.wait_ready()
        gateway.set_latency(fixed=0.4)  # each answer takes 0.4 s: a summary takes a few seconds
        message_id = bus.publish({"intent": "summary"})
        claims = mode_document(project).collection("requests")
        wait_for(lambda: any(True for _ in claims.stream()), what="the summary to be claimed (in flight)")
        code = child.terminate(timeout=60)
        assert code == 0, child.log()[-3000:]
        replies = bus.replies_to(message_id)
        assert [r["status"] for r in replies] == ["ok"], replies
        assert "consumer stopped" in child.log()
    finally:
        gateway.set_latency(fixed=0.0)
        child.stop()


def test_sigterm_given_to_another_thread_of_an_idle_consumer_stops_it(bus: Bus, gateway, project: str, tmp_path):
    """docker stop's SIGTERM goes to the process, and Linux may hand it to any thread: a gRPC one here. The idle
    consumer's main thread slept in an untimed wait and never ran the handler, so it served on until killed."""
    child = ConsumerProcess(project, gateway.port, tmp_path / "consumer.log")
    try:
        child.wait_ready()
        signal_another_thread(child.process.pid, signal.SIGTERM)
        assert child.process.wait(30) == 0, child.log()[-3000:]
        assert "consumer stopped" in child.log()
    finally:
        child.stop()


def test_the_kill_switch_is_read_fresh_for_every_message(consumer, bus: Bus, project: str):
    write_config(project, tradingEnabled=False)
    body = {"intent": "allocation", "params": {"strategies": ["dummy"],
            "strategyParams": {"dummy": {"weights": {"SPY": 0.01}}}}}  # fmt: skip
    first = bus.reply_to(bus.publish(body))
    assert first["status"] == "rejected"
    assert first["error"]["code"] == "kill_switch"
    write_config(project, tradingEnabled=True)
    second = bus.reply_to(bus.publish({**body, "dryRun": True}))
    assert second["status"] == "ok", second


def test_read_only_intents_run_side_by_side(consumer, bus: Bus, gateway):
    gateway.set_latency(fixed=0.05)
    try:
        ids = [bus.publish({"intent": "summary"}) for _ in range(10)]
        replies = bus.wait_replies(10)
    finally:
        gateway.set_latency(fixed=0.0)
    assert sorted(r["messageId"] for r in replies) == sorted(ids)
    assert all(r["status"] == "ok" for r in replies)
    spans = sorted((r["startedAt"], r["finishedAt"]) for r in replies)
    overlapping = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    assert overlapping > 0, f"summaries ran one after another: {spans}"


def test_the_live_guard_refuses_live_trading_without_allow_live(consumer_factory, bus: Bus, gateway, project: str):
    write_config(project, mode="live")
    consumer_factory(trading_mode="live")
    reply = bus.reply_to(
        bus.publish(
            {
                "intent": "allocation",
                "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.05}}}},
            }
        )
    )
    assert reply["status"] == "rejected"
    assert reply["error"]["code"] == "live_not_allowed"
    assert gateway.orders() == []


def test_a_failed_task_the_service_needs_stops_it_with_a_failure_exit_code(gateway, project: str):
    """When the gateway's connect-and-reconnect task ended in an error the consumer stopped, as it should, but
    `Consumer.run` returned 0: systemd's Restart=on-failure (a consumer run outside the image) never restarted
    it, and the log and exit status said a clean stop. It now exits 1."""
    from consumer.process import EXIT_TASK_FAILED, Consumer
    from tests.support import settings_for_tests

    service = Consumer(settings_for_tests(project, gateway.port))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.run()), daemon=True)
    thread.start()
    wait_for(lambda: service.status.subscribed, timeout=30, what="the consumer serving")

    async def fail() -> None:
        raise RuntimeError("the gateway task ended")

    # A real task on the broker loop that ends in an error, watched as process.start watches the gateway's.
    service._stop_if_it_fails("gateway", service.loop.submit(fail()))
    thread.join(60)
    assert not thread.is_alive(), "the consumer did not stop after the task failed"
    assert codes == [EXIT_TASK_FAILED]
    assert EXIT_TASK_FAILED == 1
