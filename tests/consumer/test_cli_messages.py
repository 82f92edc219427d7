"""What `consumer publish` builds: the message an operator means, or a precise reason it cannot be sent."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from consumer.cli import UsageError, build_envelope, scheduled_envelope
from consumer.data import SCHEDULES_DECLARATION
from consumer.intents import DECLARED, builtin_intents


def test_params_are_json_when_they_parse_and_dotted_keys_nest():
    envelope = build_envelope(
        "allocation",
        ['strategies=["dummy"]', "strategyParams.dummy.weights.SPY=0.2", "orderProperties.tif=GTC"],
        dry_run=True,
        idempotency_key="k1",
    )
    assert envelope == {
        "intent": "allocation",
        "params": {
            "strategies": ["dummy"],
            "strategyParams": {"dummy": {"weights": {"SPY": 0.2}}},
            "orderProperties": {"tif": "GTC"},
        },
        "dryRun": True,
        "idempotencyKey": "k1",
    }


@pytest.mark.parametrize(
    ("intent", "pairs", "params", "message"),
    [
        ("teleport", [], None, "unknown intent 'teleport'"),
        ("reconcile", ["fix=maybe"], None, "params.fix: 'maybe' is not of type 'boolean'"),
        ("reconcile", ["fix"], None, "expected KEY=VALUE"),
        ("summary", [], "[1]", "--params must be a JSON object"),
        ("summary", [], "{", "--params is not JSON"),
        ("allocation", ["orderProperties.tif=NEVER"], None, "params.orderProperties.tif"),
    ],
)
def test_bad_input_is_refused_with_the_reason(intent, pairs, params, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(".", r"\.")):
        build_envelope(intent, pairs, params)


def test_every_scheduled_job_publishes_a_valid_message():
    jobs = yaml.safe_load(SCHEDULES_DECLARATION.read_text())["jobs"]
    assert jobs
    for job in jobs:
        envelope = scheduled_envelope(job["name"], force=True)
        assert envelope["intent"] == job["intent"]
        assert envelope["params"] == job.get("params", {})
        assert envelope.get("dryRun", False) == job.get("dryRun", False)


def test_an_unknown_job_is_named():
    with pytest.raises(UsageError, match="no job 'midnight'"):
        scheduled_envelope("midnight")


def jobs() -> dict[str, dict[str, Any]]:
    return {job["name"]: job for job in yaml.safe_load(SCHEDULES_DECLARATION.read_text())["jobs"]}


def test_a_paused_job_is_refused_unless_forced():
    assert jobs()["eod-close-all"]["paused"] is True
    with pytest.raises(UsageError, match=r"job .eod-close-all. is paused in infra/schedules\.yaml; not published"):
        scheduled_envelope("eod-close-all")
    assert scheduled_envelope("eod-close-all", force=True)["intent"] == "close-all"


def test_a_job_fired_by_hand_keeps_its_own_key_and_dry_run():
    manual = scheduled_envelope("eod-close-all", dry_run=True, force=True)
    assert manual["dryRun"] is True
    assert manual["idempotencyKey"].startswith("manual:eod-close-all:")
    assert scheduled_envelope("eod-close-all", force=True)["idempotencyKey"] != manual["idempotencyKey"]
    assert scheduled_envelope("open-allocation", idempotency_key="mine")["idempotencyKey"] == "mine"


def test_as_scheduled_leaves_the_slot_key_to_the_consumer_and_is_never_a_dry_run_of_a_real_job():
    assert "idempotencyKey" not in scheduled_envelope("eod-trade-reconciliation", as_scheduled=True)
    with pytest.raises(UsageError, match="would use up today's slot with a dry run"):
        scheduled_envelope("open-allocation", dry_run=True, as_scheduled=True)
    with pytest.raises(UsageError, match="--key cannot be given"):
        scheduled_envelope("open-allocation", as_scheduled=True, idempotency_key="mine")
    nightly = scheduled_envelope("nightly-test-signal", dry_run=True, as_scheduled=True)  # declared a dry run
    assert nightly["dryRun"] is True
    assert "idempotencyKey" not in nightly


def test_every_declared_intent_is_the_intent_of_that_name():
    intents = builtin_intents()
    assert list(intents) == list(DECLARED)
    assert all(intent.name == name for name, intent in intents.items())


def test_building_a_message_imports_no_handler_nor_the_clients_they_use():
    """`consumer publish` validates against the intents' schemas by name: importing the handlers brought in
    ib_insync and the Firestore client, 0.4 s of every publish."""
    probe = (
        "import sys\n"
        "from consumer.cli import build_envelope\n"
        "build_envelope('allocation', ['strategies=[\"dummy\"]', 'strategyParams.dummy.weights.SPY=0.2'])\n"
        "heavy = sorted(m for m in ('ib_insync', 'google.cloud.firestore', 'consumer.intents.allocation') "
        "if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""
