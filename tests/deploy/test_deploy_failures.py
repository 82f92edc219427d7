"""The deployment as code against what the consumer and the launcher do and the docs promise: delivery probes the
consumer may publish, dead letters that alert whoever moved them, a heartbeat alert per VM, the API tokens are
minted with, and a Secret Manager blip that is restarted rather than final. Found by an independent review of the
deployment; each test failed before its fix."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from consumer.config import Settings
from tests.deploy.test_infra import INFRA, MODULE, load

CONSUMER = INFRA.parent / "consumer"


@pytest.fixture(scope="module")
def tf() -> dict[str, Any]:
    return load(INFRA)


@pytest.fixture(scope="module")
def mod() -> dict[str, Any]:
    return load(MODULE)


def _topics_the_consumer_may_publish_to(mod: dict[str, Any]) -> set[str]:
    member = mod["locals"]["member"]
    assert "google_service_account.workload" in member
    topics: set[str] = set()
    for body in mod["resource"]["google_pubsub_topic_iam_member"].values():
        if body["member"] != "${local.member}" or body["role"].strip('"') != "roles/pubsub.publisher":
            continue
        topics |= set(re.findall(r'"([\w-]+)"', body.get("for_each", ""))) or {body["topic"]}
    return topics


def _container_env_keys(mod: dict[str, Any]) -> str:
    return (MODULE / "main.tf").read_text()


def stalled_after_a_failed_probe(error: Exception) -> str | None:
    """What readiness says once a probe's time is up, its publish having failed with `error` (a quiet minute, then
    no delivery for longer than the watch's timeout)."""
    from concurrent.futures import Future

    from consumer.transport.delivery_watch import DeliveryWatch

    def failing(data: bytes, attributes: dict[str, str]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(error)
        return future

    now = [0.0]
    watch = DeliveryWatch(failing, interval=60, timeout=120, clock=lambda: now[0])
    now[0] = 61
    watch.check()
    now[0] = 400
    return watch.stalled()


def test_the_consumer_account_may_publish_its_delivery_probes(mod: dict[str, Any]) -> None:
    """The delivery watch (consumer/transport/delivery_watch.py, on by default: DELIVERY_PROBE_SECONDS=60) publishes
    a probe to the intents topic whenever the subscription is quiet for a minute, as the consumer's own account
    (consumer/process.py `_delivery_watch`). In the cloud that account may publish to intent-replies and
    intents-dead-letter only (infra/modules/deployment/iam.tf), so every probe is refused (PermissionDenied, on a
    future nobody reads), is never delivered, and after two minutes /readyz says "delivery stalled" for good (the
    probe in flight is never cleared, so no message delivered afterwards clears it either): `consumer status` exits 1
    on a healthy VM, and a real stall, the thing the watch exists to see, can no longer be told apart."""
    settings = Settings()
    probes_on = settings.delivery_probe > 0
    env_text = _container_env_keys(mod)
    probes_off_in_cloud = re.search(r"DELIVERY_PROBE_SECONDS\s*=\s*\"?0", env_text) is not None
    source = (CONSUMER / "process.py").read_text()
    assert "publisher.publish(topic" in source  # the probe goes to the intents topic
    assert "s.intents_topic" in source
    # What a refused probe does to readiness: it was never delivered, and the stall it reported never cleared.
    from google.api_core import exceptions as google_exceptions

    refused = google_exceptions.PermissionDenied("User not authorized to perform this action.")
    assert stalled_after_a_failed_probe(refused) is None  # a probe Pub/Sub refused was never sent: no stall

    granted = _topics_the_consumer_may_publish_to(mod)
    assert not probes_on or probes_off_in_cloud or settings.intents_topic in granted, (
        f"the consumer publishes delivery probes to {settings.intents_topic!r} every {settings.delivery_probe:g}s "
        f"of quiet, but its account may publish only to {sorted(granted)}: in the cloud every probe is refused and "
        "/readyz reports 'delivery stalled' forever"
    )


def _dead_letter_alert_metric_filter(tf: dict[str, Any]) -> str:
    policy = tf["resource"]["google_monitoring_alert_policy"]["dead_letters"]
    condition = policy["conditions"][0]["condition_threshold"][0]["filter"]
    (metric,) = re.findall(r"google_logging_metric\.(\w+)\.name", condition)
    return tf["resource"]["google_logging_metric"][metric]["filter"]


def test_every_dead_letter_raises_the_dead_letter_alert(tf: dict[str, Any]) -> None:
    """docs/deployment.md (Alerts): "a dead letter (`consumer/dead_lettered`)" alerts, and the policy's text says the
    message "waits in intents-dead-letter-hold" (kept 7 days, then gone). The policy counts one log line, the one of
    `Dispatcher._retry_or_dead_letter`. The consumer's other dead-letter path, `_settle` when the outcome cannot be
    stored on the last attempt, logs another line and is never counted; neither is a message the subscription's own
    dead-letter policy forwards (a last attempt nacked, overrun or lost with its process: the Pub/Sub service agent
    publishes it, and nothing is logged at all). Those wait in the hold unseen until retention drops them."""
    metric_filter = _dead_letter_alert_metric_filter(tf)
    counted = set(re.findall(r'jsonPayload\.message=\\?"([^"\\]+)\\?"', metric_filter))
    dispatch = (CONSUMER / "dispatch.py").read_text()
    # Each call that publishes a dead letter, with the log line written on its way there.
    dead_letter_lines = set(re.findall(r'"([^"]*; dead-lettering)"', dispatch))
    assert dead_letter_lines, "the consumer's dead-letter log lines moved"
    assert dispatch.count("publishing.dead_letter(") == 2
    uncounted = sorted(dead_letter_lines - counted)
    watches_the_topic = any(
        "pubsub.googleapis.com" in json_text and "dead-letter" in json_text
        for json_text in (str(p) for p in tf["resource"]["google_monitoring_alert_policy"].values())
    )
    assert watches_the_topic, (
        f"the dead-letter alert counts only {sorted(counted)}; the consumer also dead-letters with "
        f"{uncounted or 'nothing else'}; no "
        "policy watches the dead-letter topic or its hold subscription (pubsub.googleapis.com metrics), so what the "
        "Pub/Sub service agent forwards alerts nobody"
    )


def test_a_transient_secret_manager_failure_is_retried_not_final(
    monkeypatch: pytest.MonkeyPatch, shm_dir: Path
) -> None:
    """The VM's unit never restarts the container after exit 2 (RestartPreventExitStatus=2, cloud-init), meant for
    a configuration error a person must fix. The launcher exits 2 for every failure to read the login from Secret
    Manager, a 503 included: a Secret Manager or network blip past the client's own retries when the container
    starts (a VM reboot, a `systemctl restart` after rotating the secret, the first boot while the secret grant is
    still propagating) leaves the deployment down for good, every intent unanswered, until someone restarts it."""
    from google.api_core import exceptions as google_exceptions
    from launcher import EXIT_CONFIG, secrets
    from launcher.__main__ import main

    unit = (MODULE / "cloud-init.yaml.tftpl").read_text()
    final = {int(code) for code in re.findall(r"RestartPreventExitStatus=([\d ]+)", unit)[0].split()}
    assert final == {EXIT_CONFIG}

    calls: list[str] = []

    def unavailable(name: str) -> bytes:
        calls.append(name)
        raise google_exceptions.ServiceUnavailable("503 The service is currently unavailable.")

    monkeypatch.setattr(secrets, "secret_manager_accessor", lambda: unavailable)
    for var in [v for v in os.environ if v.startswith(("IB_", "IBC_", "TRADING_", "TWS_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("IB_CREDENTIALS_SECRET", "projects/p/secrets/ib-credentials/versions/latest")
    monkeypatch.setenv("IBC_CONFIG_DIR", str(shm_dir / "ibc"))
    monkeypatch.setenv("LAUNCHER_STATE_DIR", str(shm_dir / "state"))
    monkeypatch.setenv("IB_SETTINGS_PATH", str(shm_dir / "Jts"))
    monkeypatch.setenv("IB_GATEWAY_BUILD", "1050")
    code = main(["run"])
    assert calls, "the secret was never asked for"
    assert code not in final, (
        f"a 503 from Secret Manager made the launcher exit {code}, which the VM's unit never restarts "
        f"(RestartPreventExitStatus={EXIT_CONFIG}): the deployment stays down until a person restarts it"
    )


def test_a_silent_deployment_raises_the_no_heartbeat_alert_beside_a_live_one(tf: dict[str, Any]) -> None:
    """infra/ runs one VM per entry of `deployments` (paper and live side by side is the documented way to promote a
    strategy), each logging a heartbeat a minute. The "no heartbeat" policy (infra/alerts.tf) sums every VM's
    heartbeats into one series (REDUCE_SUM, no group_by_fields) and fires only when that sum is absent: while the
    paper VM heartbeats, the live one can be down for days (its container given up with exit 2 or 3, the VM stopped,
    the consumer hung) and the alert the docs promise ("the process, its container or the VM is down") never fires;
    its scheduled intents go unanswered and nobody is told."""
    deployments = tf["variable"]["deployments"]
    assert "map(object(" in deployments["type"]  # several deployments, one VM each
    policy = tf["resource"]["google_monitoring_alert_policy"]["no_heartbeat"]
    absent = policy["conditions"][0]["condition_absent"][0]
    (aggregation,) = absent["aggregations"]
    group_by = aggregation.get("group_by_fields", [])
    per_vm_label = r"instance_id|instance_name|metadata\.system_labels\.name|resource\.label"
    per_vm = [f for f in group_by if re.search(per_vm_label, f)]
    assert aggregation.get("cross_series_reducer") is None or per_vm, (
        f"no_heartbeat reduces every VM's heartbeats with {aggregation.get('cross_series_reducer')} grouped by "
        f"{group_by or 'nothing'}: one deployment still heartbeating hides another that stopped"
    )


def test_terraform_enables_the_api_the_metadata_proxy_mints_tokens_with(tf: dict[str, Any]) -> None:
    """Every deployment sets CONSUMER_SERVICE_ACCOUNT (infra/modules/deployment/main.tf), so the consumer's every
    Google call (its streaming pull, its replies, Firestore) runs on a token the launcher's metadata proxy mints with
    IAM Credentials `generateAccessToken` (gateway-image/launcher/metadata_proxy.py, DEFAULT_IAM_CREDENTIALS_ROOT).
    That API (iamcredentials.googleapis.com, "IAM Service Account Credentials API") is not among the APIs a new
    project has on, and neither infra/apis.tf nor step 1 of docs/deployment.md enables it: the call is refused with
    403 SERVICE_DISABLED, the proxy answers 502, and the consumer can neither pull nor reply."""
    from launcher import metadata_proxy

    assert "iamcredentials.googleapis.com" in metadata_proxy.DEFAULT_IAM_CREDENTIALS_ROOT
    assert re.search(r"CONSUMER_SERVICE_ACCOUNT\s*=", (MODULE / "main.tf").read_text())
    enabled = set(
        re.findall(r'"([a-z]+\.googleapis\.com)"', tf["resource"]["google_project_service"]["apis"]["for_each"])
    )
    assert "pubsub.googleapis.com" in enabled
    assert "iamcredentials.googleapis.com" in enabled, (
        f"the metadata proxy mints every consumer token through iamcredentials.googleapis.com, but Terraform enables "
        f"only {sorted(enabled)}"
    )


def test_a_probe_pubsub_could_not_take_for_now_keeps_reporting_the_stall() -> None:
    """Pub/Sub unreachable (a deadline, unavailable): the probe may or may not have gone out, and delivery is what
    is in doubt: readiness keeps saying stalled once the probe's time is up, unlike a probe Pub/Sub refused."""
    from google.api_core import exceptions as google_exceptions

    unavailable = google_exceptions.ServiceUnavailable("503 The service is currently unavailable.")
    assert stalled_after_a_failed_probe(unavailable) is not None
