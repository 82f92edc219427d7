"""gateway-image/compose.yaml, the laptop recipe of docs/deployment.md, read by the launcher's and the consumer's own
configuration code: its variable names, files and volumes must mean what the guide says (issue 19: the recipe was
written in the guide and never exercised)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from launcher import ibc
from launcher.aliases import with_aliases
from launcher.secrets import resolve_credentials, scrubbed_environment

from consumer.config import Settings

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "gateway-image" / "compose.yaml"
GIVEN = {"IMAGE": "registry.example/ib-consumer:1", "TWS_USERID": "paperuser1", "PROJECT": "my-trading-project"}


def service(given: dict[str, str]) -> dict[str, Any]:
    """The recipe's one service with `${VAR:?message}` substituted as docker compose does, or KeyError."""

    def substitute(match: re.Match[str]) -> str:
        return given[match.group(1)]

    text = re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", substitute, RECIPE.read_text())
    services = yaml.safe_load(text)["services"]
    assert list(services) == ["ib-consumer"]
    return dict(services["ib-consumer"])


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the recipe's directory, as compose resolves it)."""
    out = {}
    for volume in svc["volumes"]:
        host, container, *_ = volume.split(":")
        out[container] = host
    return out


def test_every_variable_the_recipe_needs_is_demanded_with_a_message() -> None:
    for name in GIVEN:
        with pytest.raises(KeyError):
            service({k: v for k, v in GIVEN.items() if k != name})
        assert re.search(rf"\$\{{{name}:\?[^}}]+\}}", RECIPE.read_text())


def test_the_recipe_logs_in_with_the_file_it_mounts_and_the_consumer_finds_its_project(tmp_path: Path) -> None:
    svc = service(GIVEN)
    env = {k: str(v) for k, v in svc["environment"].items()}
    volumes = mounts(svc)
    # The login and the credentials are files the recipe mounts where its variables point.
    assert volumes[env["TWS_PASSWORD_FILE"]] == "./ib_password"
    assert volumes[env["GOOGLE_APPLICATION_CREDENTIALS"]] == "./adc.json"
    password_file = tmp_path / "ib_password"
    password_file.write_text("paper pass\n")
    launched = with_aliases({**env, "TWS_PASSWORD_FILE": str(password_file)})

    credentials = resolve_credentials(launched)
    assert (credentials.username.reveal(), credentials.password.reveal()) == ("paperuser1", "paper pass")
    settings = ibc.GatewaySettings.from_env(launched)
    assert (settings.trading_mode, settings.api_port, settings.time_zone) == ("paper", 4002, "America/New_York")
    # The settings volume is where the gateway keeps its settings (the image's default path, not overridden here).
    dockerfile = (REPO / "gateway-image" / "Dockerfile").read_text()
    image_settings = re.search(r"IB_SETTINGS_PATH=(\S+)", dockerfile)
    assert image_settings
    assert str(settings.paths.settings) == image_settings.group(1)
    assert volumes[image_settings.group(1)] == "./jts"

    consumer = Settings.from_env(scrubbed_environment(launched))
    assert (consumer.project, consumer.trading_mode) == ("my-trading-project", "paper")
    assert "paper pass" not in repr(scrubbed_environment(launched))


def test_the_recipe_runs_the_container_as_the_vm_does() -> None:
    svc = service(GIVEN)
    unit = (REPO / "infra" / "modules" / "deployment" / "cloud-init.yaml.tftpl").read_text()
    assert svc["cap_drop"] == ["ALL"]
    assert sorted(svc["cap_add"]) == sorted(re.findall(r"--cap-add=(\w+)", unit))
    assert svc["security_opt"] == ["no-new-privileges:true"]
    stop_timeout = re.search(r"--stop-timeout=(\d+)", unit)
    assert stop_timeout
    assert svc["stop_grace_period"] == f"{stop_timeout.group(1)}s"
    shm = re.search(r"--shm-size=(\w+)", unit)
    assert shm
    assert svc["shm_size"] == shm.group(1)
    assert "ports" not in svc  # the API and health ports stay inside the container
