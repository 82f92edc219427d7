"""Other gateway images' variable names (gnzsnz/ib-gateway-docker, UnusualAlpha) accepted as aliases (issue 19),
run through the real `python -m launcher run` with stand-ins for Xvfb, IBC and the consumer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from launcher import EXIT_CONFIG
from launcher.aliases import ALIASES

from tests.deploy.test_launcher_run import PASSWORD, USERNAME, launcher_env
from tests.support import file_written, wait_for


def aliased_env(tmp_path: Path, shm: Path, **extra: str) -> dict[str, str]:
    env = launcher_env(tmp_path, shm)
    for ours in ("IB_USERNAME", "IB_PASSWORD", "IB_SETTINGS_PATH"):
        env.pop(ours)
    env.update(
        TWS_USERID=USERNAME,
        TWS_PASSWORD=PASSWORD,
        TWS_SETTINGS_PATH=str(tmp_path / "Jts"),
        TIME_ZONE="Europe/Zurich",
        AUTO_RESTART_TIME="11:30 PM",
        READ_ONLY_API="yes",
        TWOFA_TIMEOUT_ACTION="exit",
    )
    env.update(extra)
    return env


def test_a_gnzsnz_style_environment_runs_unchanged(tmp_path: Path, shm_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run"], env=aliased_env(tmp_path, shm_dir),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(file_written(tmp_path / "consumer.json", proc))
        wait_for(file_written(tmp_path / "record.mode", proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr

    config = (shm_dir / "ibc" / "config.ini").read_text()
    assert f"IbLoginId={USERNAME}\n" in config
    assert "ReadOnlyApi=yes\n" in config
    assert "AutoRestartTime=11:30 PM\n" in config
    assert (tmp_path / "Jts" / "jts.ini").exists()  # TWS_SETTINGS_PATH is where the gateway's settings go
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    written = next(e for e in events if e["message"] == "IBC configuration written")
    assert written["twofa_timeout_action"] == "exit"

    # The login by their names reaches no child either.
    consumer_env = json.loads((tmp_path / "consumer.json").read_text())
    gateway_env = (tmp_path / "record.env").read_text()
    for name in ("TWS_USERID", "TWS_PASSWORD"):
        assert name not in consumer_env
        assert name not in gateway_env
    assert PASSWORD not in json.dumps(consumer_env) + gateway_env + stdout + stderr
    assert consumer_env["TZ"] == gateway_env.split("TZ=")[1].split("\n")[0] == "Europe/Zurich"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"IB_USERNAME": "someone-else"},
            "TWS_USERID (alias of IB_USERNAME) and IB_USERNAME are both set",
        ),
        ({"JAVA_HEAP_SIZE": "1024"}, "JAVA_HEAP_SIZE is not supported: this image keeps the gateway's own"),
    ],
    ids=["alias-and-ours-disagree", "no-equivalent"],
)
def test_an_ambiguous_or_unsupported_alias_is_refused(tmp_path: Path, shm_dir: Path, extra, message) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "run"], env=aliased_env(tmp_path, shm_dir, **extra),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == EXIT_CONFIG
    assert message in done.stderr
    assert not (tmp_path / "record.argv").exists()  # nothing was started


def test_every_alias_is_documented() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    for theirs, ours in ALIASES.items():
        assert f"| `{theirs}` | `{ours}` |" in guide
