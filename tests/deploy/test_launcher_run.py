"""`python -m launcher run` end to end, with stand-ins for Xvfb, IBC's ibcstart.sh and the consumer.

Proves the wiring the unit tests cannot: the config is on tmpfs with mode 0600 before the gateway starts, the login
reaches nothing but that file (not the children's environment, argv or the launcher's log), the consumer is pointed
at the gateway's localhost port, and SIGTERM stops everything with exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launcher import EXIT_CONFIG, ibc

from tests.support import file_written, wait_for

REPO = Path(__file__).resolve().parents[2]
USERNAME, PASSWORD = "trader1", "Sup3r\\Secret pw"

FAKE_IBCSTART = """#!/bin/sh
# Stand-in for IBC's ibcstart.sh: record argv, environment and the config file's mode, then run until SIGTERM.
out="$(dirname "$0")/../../record"
printf '%s\\n' "$@" > "$out.argv"
env > "$out.env"
for arg in "$@"; do case "$arg" in --ibc-ini=*) ini="${arg#--ibc-ini=}";; esac; done
stat -c '%a' "$ini" > "$out.mode"
trap 'exit 0' TERM
while :; do sleep 0.1; done
"""

FAKE_CONSUMER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    json.dump(dict(os.environ), open(sys.argv[1], "w"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.05)
    """
)


def launcher_env(tmp_path: Path, shm_dir: Path, **extra: str) -> dict[str, str]:
    ibc_path = tmp_path / "ibc"
    (ibc_path / "scripts").mkdir(parents=True)
    script = ibc_path / "scripts" / "ibcstart.sh"
    script.write_text(FAKE_IBCSTART)
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "IBC_", "TRADING_"))}
    env.update(
        PYTHONPATH=str(REPO / "gateway-image"),
        TRADING_MODE="paper",
        IB_USERNAME=USERNAME,
        IB_PASSWORD=PASSWORD,
        IB_GATEWAY_BUILD="1050",
        IBC_PATH=str(ibc_path),
        IB_GATEWAY_PATH=str(tmp_path / "gw"),
        IB_SETTINGS_PATH=str(tmp_path / "Jts"),
        IBC_CONFIG_DIR=str(shm_dir / "ibc"),
        LAUNCHER_STATE_DIR=str(shm_dir / "state"),
        XVFB_COMMAND=f"{sys.executable} -c 'import time; time.sleep(600)'",
        CONSUMER_COMMAND=f"{sys.executable} -c '{FAKE_CONSUMER}' {tmp_path / 'consumer.json'}",
        WATCHDOG_INTERVAL_SECONDS="600",
        SHUTDOWN_GRACE_SECONDS="5",
    )
    env.update(extra)
    return env


def test_run_renders_supervises_and_stops_cleanly(tmp_path: Path, shm_dir: Path) -> None:
    env = launcher_env(tmp_path, shm_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(file_written(tmp_path / "consumer.json", proc), what="consumer.json to be written")
        wait_for(file_written(tmp_path / "record.mode", proc), what="record.mode to be written")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr

    config = shm_dir / "ibc" / "config.ini"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert (tmp_path / "record.mode").read_text().strip() == "600"  # already private when IBC starts
    assert f"IbLoginId={USERNAME}\n" in config.read_text()
    assert "IbPassword=Sup3r\\\\Secret pw\n" in config.read_text()
    assert "TrustedIPs=127.0.0.1" in (tmp_path / "Jts" / "jts.ini").read_text()

    argv = (tmp_path / "record.argv").read_text().splitlines()
    assert argv[:2] == ["1050", "--gateway"]
    assert f"--ibc-ini={config}" in argv

    consumer_env = json.loads((tmp_path / "consumer.json").read_text())
    assert (consumer_env["IB_HOST"], consumer_env["IB_PORT"]) == ("127.0.0.1", "4002")
    gateway_env = (tmp_path / "record.env").read_text()
    for leaked in (PASSWORD, "Sup3r"):
        assert leaked not in json.dumps(consumer_env)
        assert leaked not in gateway_env
        assert leaked not in "\n".join(argv)
        assert leaked not in stdout + stderr
    assert "IB_PASSWORD" not in consumer_env
    assert "IB_USERNAME" not in gateway_env

    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    written = next(e for e in events if e["message"] == "IBC configuration written")
    assert (written["credentials_from"], written["api_port"], written["read_only_api"]) == ("env", 4002, False)
    assert events[-1]["message"] == "supervisor exiting"
    assert events[-1]["exit_code"] == 0


def test_run_refuses_a_config_dir_on_disk(tmp_path: Path, shm_dir: Path) -> None:
    env = launcher_env(tmp_path, shm_dir, IBC_CONFIG_DIR=str(tmp_path / "disk"))
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "run"], env=env, capture_output=True, text=True, timeout=30
    )
    if ibc.is_memory_backed(tmp_path):
        pytest.skip("the temporary directory is itself on tmpfs here")
    assert done.returncode == EXIT_CONFIG
    assert "not on tmpfs" in done.stderr
    assert not (tmp_path / "disk").exists()


def test_run_without_a_login_is_a_configuration_error(tmp_path: Path, shm_dir: Path) -> None:
    env = launcher_env(tmp_path, shm_dir)
    del env["IB_PASSWORD"]
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "run"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == EXIT_CONFIG
    assert "IB_PASSWORD / IB_PASSWORD_FILE" in done.stderr
    assert not (tmp_path / "record.argv").exists()  # nothing was started
