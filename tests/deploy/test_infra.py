"""infra/*.tf against the shared declarations and the local provisioning: the cloud and the emulators are built from
the same infra/pubsub.yaml and infra/schedules.yaml, and each identity gets only its grants.

CI has no terraform, so the HCL is parsed (python-hcl2) and the few expressions that turn a YAML entry into resource
arguments are evaluated by a tiny evaluator below. Where a terraform binary exists, `terraform console` evaluates the
scheduled messages for real and they must equal the ones derived here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import hcl2
import pytest
import yaml

from consumer.config import Settings
from consumer.data import PUBSUB_DECLARATION, SCHEDULES_DECLARATION
from consumer.envelope import Delivery, decode
from consumer.schemas import Schemas
from devstack.provision import Topology, subscription_request

INFRA = Path(__file__).resolve().parents[2] / "infra"
MODULE = INFRA / "modules" / "deployment"
PROJECT = "p"


# --- parsing ----------------------------------------------------------------------------------------------------------
def _unquote(value: Any) -> Any:
    if isinstance(value, dict):
        return {k.strip('"'): _unquote(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    return value


def load(directory: Path) -> dict[str, Any]:
    """All of directory/*.tf merged: {"resource": {type: {name: body}}, "locals": {...}, "variable": {...}, ...}."""
    merged: dict[str, Any] = {"resource": {}, "locals": {}, "variable": {}, "data": {}, "output": {}, "module": {}}
    merged["moved"] = []
    files = sorted(directory.glob("*.tf"))
    assert files, f"no Terraform in {directory}"
    for path in files:
        with path.open() as f:
            doc = _unquote(hcl2.load(f))
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                merged["resource"].setdefault(rtype, {}).update(named)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
        for key in ("variable", "data", "output", "module"):
            for block in doc.get(key, []):
                merged[key].update(block)
        merged["moved"] += doc.get("moved", [])
    return merged


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    """The root module: the shared things and the deployments (infra/*.tf)."""
    return load(INFRA)


@pytest.fixture(scope="module")
def mod() -> dict[str, Any]:
    """The per-deployment module (infra/modules/deployment/*.tf)."""
    return load(MODULE)


def resource(tf: dict[str, Any], rtype: str, name: str) -> dict[str, Any]:
    return tf["resource"][rtype][name]


def dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d[name] for d in body.get("dynamic", []) if name in d)


# --- a tiny evaluator for the expressions that map YAML onto arguments -----------------------------------------------
class Missing(LookupError):
    pass


def evaluate(raw: Any, scope: dict[str, Any]) -> Any:
    if not isinstance(raw, str):
        return raw
    if raw.startswith('"') and raw.endswith('"'):
        return _template(raw[1:-1], scope)
    if raw.startswith("${") and _closing(raw, 1) == len(raw) - 1:
        return _expr(raw[2:-1], scope)
    return raw


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing text[start], skipping nested brackets and strings."""
    pairs, depth, quoted, i = {"{": "}", "(": ")", "[": "]"}, [], False, start
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in pairs:
            depth.append(pairs[ch])
        elif depth and ch == depth[-1]:
            depth.pop()
            if not depth:
                return i
        i += 1
    raise ValueError(f"unbalanced: {text}")


def _template(text: str, scope: dict[str, Any]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("${", i):
            end = _closing(text, i + 1)
            out.append(str(_expr(text[i + 2 : end], scope)))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_args(text: str) -> list[str]:
    args, depth, quoted, current = [], 0, False, ""
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if not quoted and ch in "([{":
            depth += 1
        if not quoted and ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    return [*args, current.strip()] if current.strip() else args


def _expr(text: str, scope: dict[str, Any]) -> Any:
    text = text.strip()
    if text.startswith("try(") and text.endswith(")"):
        for arg in _split_args(text[4:-1]):
            try:
                return _expr(arg, scope)
            except Missing:
                continue
        raise Missing(text)
    literals = {"null": None, "true": True, "false": False, "[]": [], "{}": {}}
    if text in literals:
        return literals[text]
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text) if "." in text else int(text)
    if text.startswith('"') and text.endswith('"'):
        return _template(text[1:-1], scope)
    if text.startswith("[") and text.endswith("]"):
        return [_expr(a, scope) for a in _split_args(text[1:-1])]
    topic = re.fullmatch(r"google_pubsub_topic\.declared\[(.+)\]\.id", text) or re.fullmatch(
        r"var\.topic_ids\[(.+)\]", text
    )
    if topic:
        return f"projects/{PROJECT}/topics/{_expr(topic.group(1), scope)}"
    if re.fullmatch(r"[A-Za-z_][\w.]*", text):
        value: Any = scope
        for part in text.split("."):
            if not isinstance(value, dict) or part not in value:
                raise Missing(text)
            value = value[part]
        return value
    raise NotImplementedError(f"the test's evaluator does not know {text!r}: keep the mapping simple or extend it")


def seconds(duration: Any) -> float:
    return duration.seconds + duration.nanos / 1e9


# --- the shared declarations ------------------------------------------------------------------------------------------
def test_terraform_reads_the_shared_declarations(tf: dict[str, Any]) -> None:
    assert tf["locals"]["pubsub"] == '${yamldecode(file("${path.module}/pubsub.yaml"))}'
    assert tf["locals"]["schedules"] == '${yamldecode(file("${path.module}/schedules.yaml"))}'
    assert INFRA / "pubsub.yaml" == PUBSUB_DECLARATION  # and the local stack reads the very same files
    assert INFRA / "schedules.yaml" == SCHEDULES_DECLARATION
    topics = resource(tf, "google_pubsub_topic", "declared")
    assert (topics["for_each"], topics["name"]) == ("${local.pubsub.topics}", "${each.key}")
    subs = resource(tf, "google_pubsub_subscription", "declared")
    assert (subs["for_each"], subs["name"]) == ("${local.shared_subscriptions}", "${each.key}")
    # The consumer's subscription is the per-deployment module's, with the settings declared for it.
    assert tf["locals"]["consumer_subscription"] == '"intents-consumer"' == f'"{Settings().intents_subscription}"'
    assert "if name != local.consumer_subscription" in tf["locals"]["shared_subscriptions"]
    module = tf["module"]["deployment"]
    assert module["subscription_settings"] == "${local.pubsub.subscriptions[local.consumer_subscription]}"
    # Nothing else creates topics or subscriptions behind the declaration's back.
    assert list(tf["resource"]["google_pubsub_topic"]) == ["declared"]
    assert list(tf["resource"]["google_pubsub_subscription"]) == ["declared"]
    assert "google_pubsub_topic" not in mod_resources()
    assert list(mod_resources()["google_pubsub_subscription"]) == ["intents"]


def mod_resources() -> dict[str, Any]:
    return load(MODULE)["resource"]


def cloud_subscription(tf: dict[str, Any], name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What Terraform would create for one declared subscription, in CreateSubscription terms: a shared one at the
    root, the consumer's (intents-consumer) in the deployment module, with a deployment that keeps that name."""
    if name == tf["locals"]["consumer_subscription"].strip('"') or name.startswith("consumer:"):
        name = name.removeprefix("consumer:")
        body = mod_resources()["google_pubsub_subscription"]["intents"]
        scope: dict[str, Any] = {"var": {"subscription_settings": spec}, "local": {"subscription": name}}
    else:
        body = resource(tf, "google_pubsub_subscription", "declared")
        scope = {"each": {"key": name, "value": spec}}
    out: dict[str, Any] = {
        "name": f"projects/{PROJECT}/subscriptions/{evaluate(body['name'], scope)}",
        "topic": evaluate(body["topic"], scope),
        "ack_deadline_seconds": evaluate(body["ack_deadline_seconds"], scope),
        "exactly_once": bool(evaluate(body["enable_exactly_once_delivery"], scope)),
    }
    retention = evaluate(body["message_retention_duration"], scope)
    if retention is not None:
        out["retention_seconds"] = float(retention.removesuffix("s"))
    retry = dynamic(body, "retry_policy")
    for item in evaluate(retry["for_each"], scope):
        content = retry["content"][0]
        inner = {**scope, "retry_policy": {"value": item}}
        out["backoff"] = tuple(
            float(evaluate(content[k], inner).removesuffix("s")) for k in ("minimum_backoff", "maximum_backoff")
        )
    dead = dynamic(body, "dead_letter_policy")
    for item in evaluate(dead["for_each"], scope):
        content = dead["content"][0]
        inner = {**scope, "dead_letter_policy": {"value": item}}
        out["dead_letter"] = (
            evaluate(content["dead_letter_topic"], inner),
            evaluate(content["max_delivery_attempts"], inner),
        )
    assert body["expiration_policy"][0]["ttl"] == '""', "declared subscriptions must never expire"
    return out


def local_subscription(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What the local stack creates on the emulator for the same entry (devstack/provision.py)."""
    req = subscription_request(PROJECT, name, spec)
    out: dict[str, Any] = {
        "name": req["name"],
        "topic": req["topic"],
        "ack_deadline_seconds": req["ack_deadline_seconds"],
        "exactly_once": bool(req.get("enable_exactly_once_delivery", False)),
    }
    if "message_retention_duration" in req:
        out["retention_seconds"] = seconds(req["message_retention_duration"])
    if "retry_policy" in req:
        out["backoff"] = (
            seconds(req["retry_policy"]["minimum_backoff"]),
            seconds(req["retry_policy"]["maximum_backoff"]),
        )
    if "dead_letter_policy" in req:
        dlp = req["dead_letter_policy"]
        out["dead_letter"] = (dlp["dead_letter_topic"], dlp["max_delivery_attempts"])
    return out


def test_cloud_and_emulator_subscriptions_are_the_same(tf: dict[str, Any]) -> None:
    topology = Topology.load()
    assert topology.subscriptions, "nothing declared"
    for name, spec in topology.subscriptions.items():
        assert cloud_subscription(tf, name, spec) == local_subscription(name, spec), name


def test_the_mapping_holds_for_settings_the_declaration_does_not_use_yet(tf: dict[str, Any]) -> None:
    """Defaults and optional keys agree too, so a new YAML entry cannot be read differently by the two."""
    bare = {"topic": "intents"}
    assert cloud_subscription(tf, "bare", bare) == local_subscription("bare", bare)
    assert cloud_subscription(tf, "consumer:bare", bare) == local_subscription("bare", bare)
    full = {
        "topic": "intents",
        "ackDeadlineSeconds": 17,
        "messageRetentionSeconds": 1200,
        "retryPolicy": {"minimumBackoffSeconds": 1, "maximumBackoffSeconds": 9},
        "deadLetter": {"topic": "intents-dead-letter", "maxDeliveryAttempts": 7},
        "exactlyOnceDelivery": True,
    }
    assert cloud_subscription(tf, "full", full) == local_subscription("full", full)
    assert cloud_subscription(tf, "consumer:full", full) == local_subscription("full", full)


def test_the_consumer_defaults_name_declared_resources() -> None:
    topology = Topology.load()
    s = Settings()
    assert {s.intents_topic, s.reply_topic, s.dead_letter_topic} <= set(topology.topics)
    consumer_sub = topology.subscriptions[s.intents_subscription]
    assert consumer_sub["topic"] == s.intents_topic
    assert consumer_sub["deadLetter"]["topic"] == s.dead_letter_topic
    assert consumer_sub["deadLetter"]["maxDeliveryAttempts"] == s.max_delivery_attempts


# --- schedules --------------------------------------------------------------------------------------------------------
ENVELOPE_KEYS = {"intent", "params", "dryRun", "maxAgeSeconds"}  # the YAML keys that travel in the message


def scheduled_message(job: dict[str, Any], account: str = "") -> dict[str, Any]:
    """The rule infra/declarations.tf implements (local.scheduled_messages), restated."""
    data = {"intent": job["intent"], "schedule": job["name"], "params": job.get("params", {})}
    data |= {k: job[k] for k in ("dryRun", "maxAgeSeconds") if k in job}
    attributes = {"intent": job["intent"], "schedule": job["name"]} | ({"account": account} if account else {})
    return {"data": data, "attributes": attributes}


def scheduled_messages(jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One per scheduler job: JOB-ACCOUNT for each account a job lists, JOB for a job that lists none."""
    out = {}
    for job in jobs:
        for account in job.get("accounts") or [""]:
            out[f"{job['name']}-{account}" if account else job["name"]] = scheduled_message(job, account)
    return out


def test_scheduler_jobs_come_from_the_declaration(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    declared = yaml.safe_load(SCHEDULES_DECLARATION.read_text())
    assert "google_cloud_scheduler_job" not in tf["resource"]  # each deployment creates its own (below)
    assert tf["module"]["deployment"]["scheduled_jobs"] == "${local.scheduler_jobs}"
    passed = tf["locals"]["scheduler_jobs"]
    assert "for key, fire in local.scheduled_jobs" in passed
    assert "message = local.scheduled_messages[key]" in passed
    assert "time_zone = local.schedules.timeZone" in passed
    job = resource(mod, "google_cloud_scheduler_job", "declared")
    assert job["for_each"] == "${local.jobs}"
    assert job["time_zone"] == "${each.value.time_zone}"
    assert declared["timeZone"] == Settings().schedule_time_zone == "America/New_York"
    for entry in declared["jobs"]:
        scope = {"each": {"key": entry["name"], "value": {"job": entry, "account": ""}}}
        assert evaluate(job["name"], scope) == entry["name"]
        assert evaluate(job["schedule"], scope) == entry["schedule"]
        paused = job["paused"]
        assert paused == "${var.scheduler_enabled ? try(each.value.job.paused, false) : true}"
        assert _expr("try(each.value.job.paused, false)", scope) is entry.get("paused", False)
    target = job["http_target"][0]
    assert target["uri"] == '"https://pubsub.googleapis.com/v1/${var.topic_ids["intents"]}:publish"'
    assert "each.value.message.data" in target["body"]
    assert "each.value.message.attributes" in target["body"]
    assert target["oauth_token"][0]["service_account_email"] == "${var.scheduler_service_account}"
    assert tf["module"]["deployment"]["scheduler_service_account"] == "${google_service_account.scheduler.email}"
    topic_ids = tf["module"]["deployment"]["topic_ids"]
    assert topic_ids == "${{for name, topic in google_pubsub_topic.declared : name => topic.id}}"


def test_the_declared_schedule_set() -> None:
    jobs = {j["name"]: j for j in yaml.safe_load(SCHEDULES_DECLARATION.read_text())["jobs"]}
    assert {n: (j["schedule"], j["intent"], j.get("paused", False)) for n, j in jobs.items()} == {
        "open-allocation": ("30 9 * * 1-5", "allocation", False),
        "midday-risk-check": ("45 12 * * 1-5", "risk-check", False),
        "eod-trade-reconciliation": ("55 15 * * 1-5", "trade-reconciliation", False),
        "eod-close-all": ("55 15 * * 1-5", "close-all", True),
        "half-day-close-all": ("55 12 * * 1-5", "close-all", True),
        "eod-check": ("10 16 * * 1-5", "eod-check", False),
        "nightly-test-signal": ("15 16 * * 1-5", "allocation", False),
    }
    assert jobs["nightly-test-signal"]["dryRun"] is True


def test_the_message_rule_uses_exactly_the_envelope_keys(tf: dict[str, Any]) -> None:
    rule = tf["locals"]["scheduled_messages"]
    used = set(re.findall(r"\bjob\.(\w+)", rule))
    assert used == ENVELOPE_KEYS | {"name"}, used


def test_every_scheduled_message_is_a_valid_intent_with_a_daily_idempotency_key() -> None:
    schemas = Schemas()
    zone = ZoneInfo("America/New_York")
    for job in yaml.safe_load(SCHEDULES_DECLARATION.read_text())["jobs"]:
        message = scheduled_message(job)
        fired = datetime(2026, 11, 24, 20, 15, tzinfo=UTC)  # 15:15 New York
        delivery = Delivery("m1", json.dumps(message["data"]).encode(), message["attributes"], fired)
        envelope = decode(delivery, schemas, zone)
        assert envelope.intent == job["intent"]
        assert envelope.schedule == job["name"]
        assert envelope.idempotency_key == f"schedule:{job['name']}:2026-11-24"
        assert envelope.dry_run is job.get("dryRun", False)
        assert envelope.max_age_seconds == job["maxAgeSeconds"]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary (CI has none)")
@pytest.mark.parametrize("fan_out", [False, True], ids=["declared", "with-accounts"])
def test_terraform_itself_builds_the_same_messages(tmp_path: Path, fan_out: bool) -> None:
    """terraform console on declarations.tf alone (no providers needed): the real evaluation of the rule; with
    `accounts` on a job, one message per account, each addressed to it (issue 18)."""
    for name in ("declarations.tf", "pubsub.yaml", "schedules.yaml"):
        shutil.copy(INFRA / name, tmp_path / name)
    if fan_out:
        declared = yaml.safe_load(SCHEDULES_DECLARATION.read_text())
        declared["jobs"][0]["accounts"] = ["DU1234567", "U7654321"]
        (tmp_path / "schedules.yaml").write_text(yaml.safe_dump(declared))
    env_run = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 60}
    init = subprocess.run(["terraform", "init", "-backend=false", "-input=false"], **env_run)  # type: ignore[call-overload]
    assert init.returncode == 0, init.stderr
    done = subprocess.run(  # type: ignore[call-overload]
        ["terraform", "console"], input="jsonencode(local.scheduled_messages)\n", **env_run
    )
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(json.loads(done.stdout.strip()))
    jobs = yaml.safe_load((tmp_path / "schedules.yaml").read_text())["jobs"]
    assert evaluated == scheduled_messages(jobs)
    if fan_out:
        first = jobs[0]["name"]
        assert first not in evaluated
        assert evaluated[f"{first}-U7654321"]["attributes"]["account"] == "U7654321"


# --- identities -------------------------------------------------------------------------------------------------------
def grants_of(tf: dict[str, Any], member_ref: str) -> list[tuple[str, str, str]]:
    """(resource type, role, target) of every IAM member resource granting to member_ref."""
    out = []
    for rtype, named in tf["resource"].items():
        if not rtype.endswith("_iam_member"):
            continue
        for body in named.values():
            if member_ref in body.get("member", ""):
                target = next(
                    (body[k] for k in ("topic", "subscription", "secret_id", "repository", "project") if k in body), ""
                )
                role = body["role"].strip('"')
                roles = (
                    [role] if "each.value" not in role else re.findall(r'"(roles/[\w.]+)"', body.get("for_each", ""))
                )
                out += [(rtype, r, target) for r in roles]
    return sorted(out)


def test_the_scheduler_may_publish_intents_and_nothing_else(tf: dict[str, Any]) -> None:
    assert grants_of(tf, "google_service_account.scheduler.email") == [
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher", '${google_pubsub_topic.declared["intents"].id}')
    ]


def test_each_deployment_has_only_what_it_needs(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    """Issue 13 item 12: two identities. The consumer's has Pub/Sub, Firestore and metrics, and no secret; the VM's
    (the launcher's) has the login secret, token creation on the consumer's account only, telemetry and the image
    pull, and no Pub/Sub or Firestore role."""
    assert mod["locals"]["member"] == '"serviceAccount:${google_service_account.workload.email}"'
    assert mod["locals"]["vm_member"] == '"serviceAccount:${google_service_account.vm.email}"'
    consumer = grants_of(mod, "local.member")
    assert [(t, r) for t, r, _ in consumer] == sorted(
        [
            ("google_project_iam_member", "roles/datastore.user"),
            ("google_project_iam_member", "roles/monitoring.metricWriter"),
            ("google_pubsub_subscription_iam_member", "roles/pubsub.subscriber"),
            ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ]
    )
    assert not [g for g in consumer if "secretmanager" in g[1] or "iam." in g[1]]
    vm = grants_of(mod, "local.vm_member")
    assert [(t, r) for t, r, _ in vm] == sorted(
        [
            ("google_artifact_registry_repository_iam_member", "roles/artifactregistry.reader"),
            ("google_project_iam_member", "roles/logging.logWriter"),
            ("google_project_iam_member", "roles/monitoring.metricWriter"),
            ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor"),
            ("google_service_account_iam_member", "roles/iam.serviceAccountTokenCreator"),
        ]
    )
    assert not [g for g in vm if g[1].startswith(("roles/pubsub.", "roles/datastore."))]
    # Token creation on the consumer's account only (grants_of has no service_account_id target: read it here).
    (creator,) = mod["resource"]["google_service_account_iam_member"].values()
    assert creator["service_account_id"] == "${google_service_account.workload.name}"
    assert creator["member"] == "${local.vm_member}"
    assert "TokenCreator" not in json.dumps(mod["resource"].get("google_project_iam_member", {}))
    assert "TokenCreator" not in json.dumps(tf["resource"])
    # The VM (so the metadata server) carries the VM's account; the consumer's email reaches the launcher.
    vm_instance = resource(mod, "google_compute_instance", "consumer")
    assert vm_instance["service_account"][0]["email"] == "${google_service_account.vm.email}"
    assert re.search(
        r"CONSUMER_SERVICE_ACCOUNT\s*=\s*google_service_account\.workload\.email",
        (MODULE / "main.tf").read_text(),
    )
    assert set(mod["resource"]["google_service_account"]) == {"vm", "workload"}
    # Every IAM member of the module is one of this deployment's two accounts or the Pub/Sub service agent.
    members = {
        body["member"]
        for rtype, named in mod["resource"].items()
        if rtype.endswith("_iam_member")
        for body in named.values()
    }
    assert members == {"${local.member}", "${local.vm_member}", "${var.pubsub_service_agent}"}
    publish = resource(mod, "google_pubsub_topic_iam_member", "consumer_publishes")
    # Its replies, its dead letters, and its delivery probes (to intents, which it reads back on its own subscription)
    assert publish["for_each"] == '${toset(["intents", "intent-replies", "intents-dead-letter"])}'
    subscribe = resource(mod, "google_pubsub_subscription_iam_member", "consumer_subscribes")
    assert subscribe["subscription"] == "${google_pubsub_subscription.intents.id}"  # its own, filtered one
    # The root grants nothing to a deployment's identity: there is none at the root any more.
    assert "google_service_account.consumer" not in json.dumps(tf["resource"])
    assert set(tf["resource"]["google_service_account"]) == {"scheduler"}


def test_a_deployment_reads_only_its_own_login_secret(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    """Secret-level accessor on the module's own secret, for the VM's account only (not the consumer's); no
    project-level secretAccessor anywhere (it would let every deployment read every login)."""
    (name,) = mod["resource"]["google_secret_manager_secret_iam_member"]
    grant = mod["resource"]["google_secret_manager_secret_iam_member"][name]
    assert grant["secret_id"] == "${google_secret_manager_secret.ib_credentials.id}"
    assert grant["member"] == "${local.vm_member}"
    assert grant["role"] == '"roles/secretmanager.secretAccessor"'
    secret = resource(mod, "google_secret_manager_secret", "ib_credentials")
    assert secret["secret_id"] == "${local.d.ib_credentials_secret_id}"
    assert mod["locals"]["d"] == "${var.deployment}"
    for layer in (tf, mod):
        project_roles = json.dumps(layer["resource"].get("google_project_iam_member", {}))
        assert "secretmanager" not in project_roles
        assert "google_secret_manager_secret" not in layer["resource"] or layer is mod
        assert not any(t in layer["resource"] for t in ("google_project_iam_binding", "google_project_iam_policy"))
    # Each deployment has a secret of its own: two deployments naming one secret are refused.
    validations = [v["condition"] for v in tf["variable"]["deployments"]["validation"]]
    assert any("distinct(values(var.deployments)[*].ib_credentials_secret_id)" in c for c in validations)


def test_the_pubsub_service_agent_can_dead_letter(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    publisher = resource(tf, "google_pubsub_topic_iam_member", "dead_letter_publisher")
    subscriber = resource(tf, "google_pubsub_subscription_iam_member", "dead_letter_source_subscriber")
    assert publisher["role"] == '"roles/pubsub.publisher"'
    assert subscriber["role"] == '"roles/pubsub.subscriber"'
    assert "gcp-sa-pubsub" in tf["locals"]["pubsub_service_agent"]
    # Their for_each sets come from the declaration: every dead-lettering subscription and its dead-letter topic.
    assert publisher["for_each"] == "${local.dead_letter_topics}"
    assert subscriber["for_each"] == "${local.dead_lettered}"
    lettered = {n: s for n, s in Topology.load().subscriptions.items() if "deadLetter" in s}
    assert lettered, "the declaration has no dead-letter policy any more"
    # The deployments' own subscriptions (the consumer's settings, dead-lettered) get theirs in the module.
    assert "intents-consumer" in lettered
    own = resource(mod, "google_pubsub_subscription_iam_member", "dead_letter_source_subscriber")
    assert own["subscription"] == "${google_pubsub_subscription.intents.id}"
    assert own["member"] == "${var.pubsub_service_agent}"
    assert own["count"] == "${try(var.subscription_settings.deadLetter, null) == null ? 0 : 1}"
    assert tf["module"]["deployment"]["pubsub_service_agent"] == "${local.pubsub_service_agent}"
    assert "for name, s in local.pubsub.subscriptions" in tf["locals"]["dead_letter_topics"]


def test_no_secret_value_and_no_public_ip(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    assert "google_secret_manager_secret_version" not in tf["resource"]
    assert "google_secret_manager_secret_version" not in mod["resource"]
    assert "google_compute_instance" not in tf["resource"]
    vm = resource(mod, "google_compute_instance", "consumer")
    assert all("access_config" not in nic for nic in vm["network_interface"])
    assert "cos-cloud/cos-stable" in json.dumps(vm["boot_disk"])
    assert "live_trading_acknowledged" in json.dumps(vm["lifecycle"])
    firewalls = tf["resource"].get("google_compute_firewall", {})
    assert all(json.loads(json.dumps(fw))["source_ranges"] == ['"35.235.240.0/20"'] for fw in firewalls.values())


def test_the_live_guard_comes_from_the_deployment_and_last(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    """ALLOW_LIVE and LEVERAGE_CAP_MAX are set by Terraform, after (so never overridden by) consumer_env."""
    merged = mod["locals"]["container_env"]
    assert merged.index("local.d.consumer_env") < merged.index("ALLOW_LIVE") < merged.index("LEVERAGE_CAP_MAX")
    assert re.search(
        r'ALLOW_LIVE\s*=\s*local\.d\.trading_mode == "live" && local\.d\.live_trading_acknowledged', merged
    )
    assert "leverage_cap_max = optional(number, 1)" in tf["variable"]["deployments"]["type"]
    # The accounts served and the subscription come from the deployment too, required: without them the consumer
    # does not start, or pulls the wrong subscription.
    assert merged.index("local.d.consumer_env") < merged.index("IB_ACCOUNTS")
    assert re.search(r'IB_ACCOUNTS\s*=\s*join\(",", local\.d\.ib_accounts\)', merged)
    assert "ib_accounts = list(string)" in tf["variable"]["deployments"]["type"]  # no default
    assert re.search(r'DEFAULT_DEPLOYMENT\s*=\s*local\.d\.default \? "yes" : "no"', merged)
    assert merged.index("local.d.consumer_env") < merged.index("INTENTS_SUBSCRIPTION")
    assert re.search(r"INTENTS_SUBSCRIPTION\s*=\s*google_pubsub_subscription\.intents\.name", merged)


def test_the_env_file_is_private_and_the_container_keeps_only_the_capabilities_to_switch_users() -> None:
    """/etc/ib-consumer.env was 0644; the launcher needs CAP_SETUID/SETGID/KILL to run the consumer as its own user."""
    template = (MODULE / "cloud-init.yaml.tftpl").read_text()
    rendered = re.sub(r"%\{[^}]*\}", "", template).replace("${key}=${value}", "KEY=value")
    files = {f["path"]: f for f in yaml.safe_load(rendered)["write_files"]}
    assert files["/etc/ib-consumer.env"]["permissions"] == "0600"
    assert files["/etc/ib-consumer.env"]["owner"] == "root"
    unit = files["/etc/systemd/system/ib-consumer.service"]["content"]
    run = unit[unit.index("ExecStart=/usr/bin/docker run") :].split("ExecStop=")[0]
    assert "--cap-drop=ALL" in run
    # NET_ADMIN: the launcher's iptables rule that keeps the metadata server from the consumer (issue 13 item 12).
    assert sorted(re.findall(r"--cap-add=(\w+)", run)) == ["KILL", "NET_ADMIN", "SETGID", "SETUID"]
    assert "--security-opt=no-new-privileges" in run


def test_the_gateways_settings_live_on_a_volume_owned_by_the_gateway_user() -> None:
    """Issue 19: a container restart must not be a first login; the settings directory is the gateway user's only."""
    template = (MODULE / "cloud-init.yaml.tftpl").read_text()
    dockerfile = (INFRA.parent / "gateway-image" / "Dockerfile").read_text()
    settings_path = re.search(r"IB_SETTINGS_PATH=(\S+)", dockerfile)
    gateway_uid = re.search(r"useradd --uid (\d+) [^\n]*--home-dir /home/ibgateway ", dockerfile)
    assert settings_path
    assert gateway_uid
    volume = re.search(r"--volume=(\S+):(\S+) ", template)
    assert volume
    assert volume.group(2) == settings_path.group(1)
    uid = gateway_uid.group(1)
    assert f"ExecStartPre=/usr/bin/install -d -o {uid} -g {uid} -m 0700 {volume.group(1)}\n" in template
    assert template.index(f"install -d -o {uid}") < template.index("ExecStart=/usr/bin/docker run")


def test_the_scheduler_stays_paused_until_the_guide_enables_it(tf: dict[str, Any]) -> None:
    """Issue 19: scheduler_enabled defaulted to true, so step 5's apply unpaused every job before step 7's checks."""
    assert tf["variable"]["scheduler_enabled"]["default"] is False
    example = hcl2.loads((INFRA / "terraform.tfvars.example").read_text())
    assert example["scheduler_enabled"] is False
    guide = (INFRA.parent / "docs" / "deployment.md").read_text()
    enabling = [
        line for line in guide.splitlines() if "scheduler_enabled = true" in line or "scheduler_enabled=true" in line
    ]
    assert enabling, "the guide never enables the scheduler"
    last_step = guide.index("## 7.")
    assert all(guide.index(line) > last_step for line in enabling)


def test_an_empty_image_is_refused_and_the_vm_never_depends_on_it(tf: dict[str, Any], mod: dict[str, Any]) -> None:
    """Issue 19: image defaulted to "" and meant count = 0: an apply without -var image planned to destroy the VM."""
    deployments = tf["variable"]["deployments"]
    assert "default" not in deployments
    assert "image = string" in deployments["type"]  # required, no optional()
    condition = next(v["condition"] for v in deployments["validation"] if "d.image" in v["condition"])
    pattern = re.search(r'regex\("(.+)", d\.image\)', condition).group(1).replace("\\\\", "\\")
    accepted = re.compile(pattern)
    assert not accepted.search("")
    assert not accepted.search("us-east4-docker.pkg.dev/p/ib-consumer/gateway")  # no tag: which build?
    assert accepted.search("us-east4-docker.pkg.dev/p/ib-consumer/gateway:0123abc")
    assert accepted.search("us-east4-docker.pkg.dev/p/ib-consumer/gateway@sha256:" + "a" * 64)
    example = hcl2.loads((INFRA / "terraform.tfvars.example").read_text())
    for entry in example["deployments"].values():
        assert accepted.search(entry["image"].strip('"'))

    vm = resource(mod, "google_compute_instance", "consumer")
    assert "count" not in vm
    assert "for_each" not in vm
    assert tf["output"]["deployments"]["value"].count("vm = d.vm") == 1
    assert mod["output"]["vm"]["value"] == "${google_compute_instance.consumer.name}"


# --- deployments (issue 18, item 5) -----------------------------------------------------------------------------------
def test_one_module_instance_per_deployment(tf: dict[str, Any]) -> None:
    assert list(tf["module"]) == ["deployment"]
    module = tf["module"]["deployment"]
    assert module["source"] == '"./modules/deployment"'
    assert module["for_each"] == "${var.deployments}"
    assert (module["name"], module["deployment"]) == ("${each.key}", "${each.value}")
    assert "map(object(" in tf["variable"]["deployments"]["type"]
    # What is per deployment lives in the module only; the root keeps the shared things.
    per_deployment = {
        "google_compute_instance",
        "google_service_account",
        "google_secret_manager_secret",
        "google_secret_manager_secret_iam_member",
        "google_cloud_scheduler_job",
        "google_artifact_registry_repository_iam_member",
    }
    assert per_deployment <= set(load(MODULE)["resource"])
    assert not (per_deployment - {"google_service_account"}) & set(tf["resource"])
    assert {"google_compute_network", "google_compute_router_nat", "google_firestore_database"} <= set(tf["resource"])
    assert "google_artifact_registry_repository" in tf["resource"]


def subscription_filter(accounts: list[str], default: bool, others: list[str]) -> str:
    """The rule infra/modules/deployment/routing.tf implements (local.filter), restated: its own accounts; for the
    default, everything not addressed to another deployment's account."""
    if not default:
        return " OR ".join(f'attributes.account = "{a}"' for a in accounts)
    if not others:
        return ""
    return "NOT attributes:account OR (" + " AND ".join(f'attributes.account != "{a}"' for a in others) + ")"


def test_the_subscription_filter_is_built_from_the_deployments_accounts(
    tf: dict[str, Any], mod: dict[str, Any]
) -> None:
    sub = resource(mod, "google_pubsub_subscription", "intents")
    assert sub["filter"] == "${local.filter}"
    assert "length(local.filter) <= 256" in json.dumps(sub["lifecycle"])  # Pub/Sub's limit, at plan time
    rule = mod["locals"]["filter"]
    assert '[for account in var.deployment.ib_accounts : "attributes.account = \\"${account}\\""]' in rule
    assert "length(var.other_accounts) == 0" in rule
    assert '"NOT attributes:account OR (${join(" AND ", [for account in var.other_accounts : ' in rule
    others = tf["module"]["deployment"]["other_accounts"]
    assert others == "${flatten([for name, d in var.deployments : d.ib_accounts if name != each.key])}"
    jobs = mod["locals"]["jobs"]
    assert 'fire.account == "" ? var.deployment.default : contains(var.deployment.ib_accounts, fire.account)' in jobs
    # The subscription each deployment pulls is the one its consumer is told to pull.
    assert mod["locals"]["subscription"] == '${local.d.legacy_names ? "intents-consumer" : "intents-${var.name}"}'


MODULE_INPUTS = {
    "project_id": "p",
    "region": "r",
    "zone": "z",
    "subnetwork_id": "s",
    "topic_ids": {},
    "subscription_settings": {},
    "pubsub_service_agent": "a",
    "registry": {"location": "l", "name": "n"},
    "scheduler_service_account": "s",
    "scheduler_enabled": False,
}


def deployment(accounts: list[str], default: bool, **more: Any) -> dict[str, Any]:
    return {
        "trading_mode": "paper",
        "ib_accounts": accounts,
        "default": default,
        "image": "us-east4-docker.pkg.dev/p/ib-consumer/gateway:0123abc",
        "machine_type": "e2-small",
        "ib_credentials_secret_id": f"ib-login-{accounts[0].lower() if accounts else 'none'}",
        "live_trading_acknowledged": False,
        "leverage_cap_max": 1,
        "consumer_env": {},
        "legacy_names": False,
    } | more


def console(directory: Path, expression: str, variables: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """terraform console in directory (variables and locals only: no providers needed) with variables as tfvars."""
    (directory / "terraform.tfvars.json").write_text(json.dumps(variables))
    env_run = {"cwd": directory, "capture_output": True, "text": True, "timeout": 60}
    init = subprocess.run(["terraform", "init", "-backend=false", "-input=false"], **env_run)  # type: ignore[call-overload]
    assert init.returncode == 0, init.stderr
    return subprocess.run(["terraform", "console"], input=expression + "\n", **env_run)  # type: ignore[call-overload,no-any-return]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary (CI has none)")
@pytest.mark.parametrize(
    ("accounts", "default", "others"),
    [
        (["DU111111"], True, []),
        (["DU111111"], True, ["U222222", "U333333"]),
        (["U222222", "U333333"], False, ["DU111111"]),
        (["DU111111", "DU444444"], True, ["U222222"]),
    ],
    ids=["single-default", "paper-default", "live-two-accounts", "default-two-accounts"],
)
def test_terraform_itself_builds_the_filter_and_picks_the_jobs(
    tmp_path: Path, accounts: list[str], default: bool, others: list[str]
) -> None:
    """terraform console on the module's routing.tf: the filter is exactly the deployment's accounts (for the default:
    all but the other deployments' accounts, so unaddressed and unknown ones are answered once), and the jobs are
    those addressed to its accounts (plus the unaddressed ones for the default), never another deployment's."""
    for name in ("routing.tf", "variables.tf"):
        shutil.copy(MODULE / name, tmp_path / name)
    jobs = {
        "open-allocation": {"account": ""},
        **{f"eod-check-{a}": {"account": a} for a in [*accounts, "U999999"]},
    }
    variables = MODULE_INPUTS | {"name": "d", "deployment": deployment(accounts, default), "scheduled_jobs": jobs}
    variables["other_accounts"] = others
    done = console(tmp_path, "jsonencode({filter = local.filter, jobs = keys(local.jobs)})", variables)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(json.loads(done.stdout.strip()))
    assert evaluated["filter"] == subscription_filter(accounts, default, others)
    for other in others:  # another deployment's messages never reach this one
        assert f'attributes.account = "{other}"' not in evaluated["filter"]
        if default:
            assert f'attributes.account != "{other}"' in evaluated["filter"]
    if not default:  # a non-default one receives its own accounts' messages and nothing else
        assert "NOT" not in evaluated["filter"]
        assert evaluated["filter"].count("attributes.account = ") == len(accounts)
    assert sorted(evaluated["jobs"]) == sorted(
        [f"eod-check-{a}" for a in accounts] + (["open-allocation"] if default else [])
    )


VALID_DEPLOYMENTS = {
    "paper": deployment(["DU111111"], True, legacy_names=True),
    "live": deployment(["U222222"], False, trading_mode="live", live_trading_acknowledged=True),
}


def test_the_deployments_variable_is_validated(tf: dict[str, Any]) -> None:
    messages = [v["error_message"] for v in tf["variable"]["deployments"]["validation"]]
    for needle in ("Exactly one deployment must be the default", "An account is in two deployments", "image must name"):
        assert any(needle in m for m in messages), needle
    assert any("trading_mode must be paper or live" in m for m in messages)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary (CI has none)")
@pytest.mark.parametrize(
    ("change", "refused"),
    [
        ({}, None),
        ({"live": {"default": True}}, "Exactly one deployment must be the default"),
        ({"paper": {"default": False}}, "Exactly one deployment must be the default"),
        ({"live": {"ib_accounts": ["U222222", "DU111111"]}}, "An account is in two deployments"),
        ({"live": {"image": ""}}, "image must name"),
        ({"live": {"trading_mode": "real"}}, "trading_mode must be paper or live"),
        ({"live": {"ib_accounts": []}}, "ib_accounts must list at least one"),
        ({"live": {"ib_credentials_secret_id": "ib-login-du111111"}}, "its own login secret"),
        ({"live": {"legacy_names": True}}, "Only one deployment"),
    ],
    ids=[
        "valid",
        "two-defaults",
        "no-default",
        "shared-account",
        "no-image",
        "bad-mode",
        "no-account",
        "shared-secret",
        "two-legacy",
    ],
)
def test_terraform_refuses_an_invalid_deployments_map(
    tmp_path: Path, change: dict[str, Any], refused: str | None
) -> None:
    """The root's variables.tf alone (no providers), the map given as tfvars: terraform's own validation."""
    shutil.copy(INFRA / "variables.tf", tmp_path / "variables.tf")
    deployments = {k: v | change.get(k, {}) for k, v in VALID_DEPLOYMENTS.items()}
    done = console(tmp_path, "jsonencode(keys(var.deployments))", {"project_id": "p", "deployments": deployments})
    # terraform console exits 0 and prints the errors: read them, without colours and box drawing.
    said = re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m|[│╷╵]", "", done.stdout + done.stderr))
    if refused is None:
        assert done.returncode == 0, said
        assert "Error" not in said
        assert json.loads(json.loads(done.stdout.strip())) == ["live", "paper"]
    else:
        assert "Error: Invalid value for variable" in said
        assert refused in said, said


# Every resource the single deployment had at the root before the module, and where it is now.
_KEPT_ADDRESS = [
    "google_compute_instance.consumer",
    "google_service_account.consumer",
    "google_secret_manager_secret.ib_credentials",
    "google_secret_manager_secret_iam_member.consumer_reads_login",
    "google_pubsub_subscription_iam_member.consumer_subscribes",
    "google_pubsub_topic_iam_member.consumer_publishes",
    "google_project_iam_member.consumer_firestore",
    "google_project_iam_member.consumer_telemetry",
    "google_artifact_registry_repository_iam_member.consumer_pulls",
    "google_cloud_scheduler_job.declared",
]
# Renamed when the VM's and the consumer's identities were split (issue 13 item 12): the single account stays the VM's.
_RENAMED = {
    "google_service_account.consumer": "google_service_account.vm",
    "google_secret_manager_secret_iam_member.consumer_reads_login": (
        "google_secret_manager_secret_iam_member.vm_reads_login"
    ),
    "google_project_iam_member.consumer_telemetry": "google_project_iam_member.vm_telemetry",
    "google_artifact_registry_repository_iam_member.consumer_pulls": (
        "google_artifact_registry_repository_iam_member.vm_pulls"
    ),
}
# New with the split: the consumer's account and its grants have no predecessor.
_NEW_IN_MODULE = {
    "google_service_account.workload",
    "google_service_account_iam_member.vm_impersonates_consumer",
    "google_project_iam_member.consumer_metrics",
}
PER_DEPLOYMENT_BEFORE = {address: _RENAMED.get(address, address) for address in _KEPT_ADDRESS} | {
    'google_pubsub_subscription.declared["intents-consumer"]': "google_pubsub_subscription.intents",
    'google_pubsub_subscription_iam_member.dead_letter_source_subscriber["intents-consumer"]': (
        "google_pubsub_subscription_iam_member.dead_letter_source_subscriber[0]"
    ),
}


def test_moved_blocks_carry_the_single_deployment_into_the_paper_module(
    tf: dict[str, Any], mod: dict[str, Any]
) -> None:
    """An existing single deployment plans without destroying its VM: each of its resources moves to
    module.deployment["paper"], and every resource of the module has a predecessor moved into it."""
    moves = {
        m["from"].removeprefix("${").removesuffix("}"): m["to"].removeprefix("${").removesuffix("}")
        for m in tf["moved"]
    }
    target = 'module.deployment["paper"].'
    assert {k: moves.get(k) for k in PER_DEPLOYMENT_BEFORE} == {k: target + v for k, v in PER_DEPLOYMENT_BEFORE.items()}
    # The older move (the counted VM) chains into the new one.
    assert moves["google_compute_instance.consumer[0]"] == "google_compute_instance.consumer"
    module_resources = {f"{rtype}.{name}" for rtype, named in mod["resource"].items() for name in named}
    moved_into = {re.sub(r"\[\d+\]$", "", to.removeprefix(target)) for to in moves.values() if to.startswith(target)}
    assert module_resources - _NEW_IN_MODULE == moved_into
    # Inside the module, each renamed address moves to its new name (deployments created by the module already).
    module_moves = {
        m["from"].removeprefix("${").removesuffix("}"): m["to"].removeprefix("${").removesuffix("}")
        for m in mod["moved"]
    }
    assert module_moves == _RENAMED
    # A moved-from address must not be declared again (terraform refuses it), so the consumer's account is new.
    assert not {a.split(".")[1] for a in module_moves} & set(mod["resource"].get("google_service_account", {}))
    # Nothing moved away is still declared at the root (it would be a second copy, not a move).
    for source in PER_DEPLOYMENT_BEFORE:
        rtype, name = re.sub(r"\[.*\]$", "", source).split(".")
        if source.startswith("google_pubsub_subscription"):
            continue  # the shared subscriptions keep the resource, without intents-consumer (checked above)
        assert name not in tf["resource"].get(rtype, {}), source
    # legacy_names keeps the single deployment's names, so the moved VM, service account and subscription match.
    assert mod["locals"]["vm_name"] == '${local.d.legacy_names ? "ib-consumer" : "ib-consumer-${var.name}"}'


# --- alerting ---------------------------------------------------------------------------------------------------------
CONSUMER_SOURCE = "\n".join(p.read_text() for p in (INFRA.parent / "consumer").rglob("*.py"))


def test_every_log_based_metric_counts_a_line_the_consumer_writes(tf: dict[str, Any]) -> None:
    for name, metric in tf["resource"]["google_logging_metric"].items():
        message = re.search(r'jsonPayload\.message=\\?"([^"\\]+)\\?"', metric["filter"]).group(1)
        assert f'"{message}"' in CONSUMER_SOURCE, f"{name}: no consumer log line {message!r}"
        for field in re.findall(r"EXTRACT\(jsonPayload\.(\w+)\)", json.dumps(metric)):
            assert f"{field}=" in CONSUMER_SOURCE, f"{name}: the consumer logs no field {field}"
    assert "jsonPayload.alert=true" in resource(tf, "google_logging_metric", "risk_alerts")["filter"]


def test_the_alert_policies_watch_the_consumer_and_notify_the_configured_channels(tf: dict[str, Any]) -> None:
    policies = tf["resource"]["google_monitoring_alert_policy"]
    assert set(policies) == {"error_replies", "risk_alerts", "dead_letters", "no_heartbeat", "gateway_disconnected"}
    metrics = tf["resource"]["google_logging_metric"]
    for name, policy in policies.items():
        assert policy["notification_channels"] == "${local.alert_channels}", name
        # The dead-letter policy also watches the topic itself (a Pub/Sub metric): what the service agent forwards.
        conditions = policy["conditions"][:1]
        (condition,) = conditions
        kind = next(k for k in condition if k.startswith("condition_"))
        body = condition[kind][0]
        if kind == "condition_prometheus_query_language":
            continue
        used = re.findall(r"google_logging_metric\.(\w+)\.name", body["filter"])
        assert len(used) == 1, name
        assert used[0] in metrics, name
        assert "logging.googleapis.com/user/" in body["filter"] or "${local.user_metric}/" in body["filter"]
    assert [len(p["conditions"]) for p in policies.values()].count(2) == 1
    errors = policies["error_replies"]["conditions"][0]["condition_threshold"][0]["filter"]
    assert r"metric.label.status = \"error\"" in errors
    absent = policies["no_heartbeat"]["conditions"][0]["condition_absent"][0]
    assert absent["duration"].strip('"') == "600s"


def test_a_gateway_disconnect_alerts_after_five_minutes_outside_the_nightly_restart(tf: dict[str, Any]) -> None:
    condition = tf["resource"]["google_monitoring_alert_policy"]["gateway_disconnected"]["conditions"][0]
    query = condition["condition_prometheus_query_language"][0]
    assert query["duration"].strip('"') == "300s"
    # Cloud Monitoring's PromQL name of a log-based metric: logging.googleapis.com/user/a/b -> ..._com:user_a_b
    name = resource(tf, "google_logging_metric", "heartbeats")["name"].strip('"')
    assert f"logging_googleapis_com:user_{name.replace('/', '_')}{{gateway!=" in query["query"].replace("\\", "")
    assert "${local.outside_restart}" in query["query"]
    assert tf["variable"]["gateway_restart_hours_utc"]["default"] == [3, 4]
    rule = tf["locals"]["outside_restart"]
    assert "hour() != ${h}" in rule
    assert '"vector(1)"' in rule  # no window: every hour alerts


def test_alerts_go_to_email_by_default_and_to_any_channel_given(tf: dict[str, Any]) -> None:
    email = resource(tf, "google_monitoring_notification_channel", "email")
    assert email["type"].strip('"') == "email"
    assert email["for_each"] == "${toset(var.alert_emails)}"
    assert tf["variable"]["alert_emails"]["default"] == []
    assert tf["variable"]["alert_notification_channels"]["default"] == []
    channels = tf["locals"]["alert_channels"]
    assert "google_monitoring_notification_channel.email" in channels
    assert "var.alert_notification_channels" in channels


def test_large_unqueried_values_are_left_out_of_firestores_indexes(tf: dict[str, Any]) -> None:
    """A strategy's 1,000 positions indexed field by field slow every write and can pass the 40,000 index entries a
    document may have, and a reply's JSON text is indexed by a prefix nobody reads: the big values are exempt, and
    none of them is a field any query filters or orders on."""
    exempt = tf["locals"]["unindexed_fields"]
    field = tf["resource"]["google_firestore_field"]["unindexed"]
    assert field["for_each"] == "${local.unindexed_fields}"
    assert field["index_config"] == [{}]
    code = {p: p.read_text() for p in (INFRA.parent / "consumer").rglob("*.py")}
    layout = (INFRA.parent / "consumer" / "store" / "layout.py").read_text()
    queried = {
        name for text in code.values() for name in re.findall(r"(?:FieldFilter\(|order_by\()\s*\"([\w.]+)\"", text)
    }
    assert queried, "no query found: the scan is broken"
    for entry in exempt.values():
        collection, name = entry["collection"].strip('"'), entry["field"].strip('"')
        assert f'collection("{collection}")' in layout, f"{collection} is not a collection of the layout"
        assert any(f'"{name}"' in text for text in code.values()), f"{name} is written by no module"
        assert not any(q == name or q.startswith(f"{name}.") for q in queried), f"{name} is queried"
