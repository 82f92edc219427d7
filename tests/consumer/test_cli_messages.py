"""What `consumer publish` builds: the message an operator means, or a precise reason it cannot be sent."""

from __future__ import annotations

import pytest
import yaml

from consumer.cli import UsageError, build_envelope, scheduled_envelope
from consumer.devstack.provision import SCHEDULES_DECLARATION


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
        envelope = scheduled_envelope(job["name"])
        assert envelope["intent"] == job["intent"]
        assert envelope["params"] == job.get("params", {})
        assert envelope.get("dryRun", False) == job.get("dryRun", False)


def test_an_unknown_job_is_named():
    with pytest.raises(UsageError, match="no job 'midnight'"):
        scheduled_envelope("midnight")
