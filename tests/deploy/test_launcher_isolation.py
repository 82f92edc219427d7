"""The IB login stays with the launcher and the gateway user (issue 13, item 11), proved with real processes.

`python -m launcher run` is started for real with stand-ins for Xvfb, ibcstart.sh and the consumer; they look at
/proc and the files the way a compromised consumer would. Dropping privileges needs root: those tests skip without.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher import ibc
from launcher.secrets import CREDENTIAL_VARIABLES

from tests.support import file_written, wait_for

REPO = Path(__file__).resolve().parents[2]
USERNAME, PASSWORD = "trader1", "Sup3r-Secret-pw"
GATEWAY_UID, CONSUMER_UID = 61001, 61002  # no passwd entries needed: the launcher takes numeric ids

# The gateway stand-in: who it runs as, whether it can read IBC's config (it must), then run until SIGTERM.
FAKE_IBCSTART = """#!/bin/sh
out="$RECORD_DIR/gateway"
for arg in "$@"; do case "$arg" in --ibc-ini=*) ini="${arg#--ibc-ini=}";; esac; done
id -u > "$out.uid"
if cat "$ini" > /dev/null 2>&1; then echo yes > "$out.reads_config"; else echo no > "$out.reads_config"; fi
trap 'exit 0' TERM
while :; do sleep 0.1; done
"""

# The consumer stand-in, in sh so that it runs as any user: what could it read?
FAKE_CONSUMER_SH = """#!/bin/sh
out="$RECORD_DIR/consumer"
try() {
  if cat "$1" > "$out.$2" 2>/dev/null; then echo read > "$out.$2.result"; else echo denied > "$out.$2.result"; fi
}
try "$CONFIG_INI" config
try "/proc/$PPID/environ" launcher_environ
try "$LOGIN_FILE" login_file
try "$COOKIE_FILE" display_cookie
id -u > "$out.uid"
trap 'exit 0' TERM
while :; do sleep 0.1; done
"""

# The consumer stand-in as the launcher's own user: the launcher's environ is readable, so it must hold no login.
FAKE_CONSUMER_PY = textwrap.dedent(
    """
    import json, os, signal, sys, time
    launcher = open(f"/proc/{os.getppid()}/environ", "rb").read().split(b"\\0")
    json.dump({"launcher": [v.decode() for v in launcher if v], "own": dict(os.environ)}, open(sys.argv[1], "w"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.05)
    """
)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700 under root): the stand-ins live here."""
    path = Path(tempfile.mkdtemp(prefix="launcher-iso-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def base_env(base: Path, shm_dir: Path, **extra: str) -> dict[str, str]:
    executable(base / "ibc" / "scripts" / "ibcstart.sh", FAKE_IBCSTART)
    record = base / "record"
    record.mkdir(mode=0o1777)
    record.chmod(0o1777)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IB_", "IBC_", "TRADING_", "GATEWAY_", "CONSUMER"))}
    env.update(
        PYTHONPATH=str(REPO / "gateway-image"),
        TRADING_MODE="paper",
        IB_GATEWAY_BUILD="1050",
        IBC_PATH=str(base / "ibc"),
        IB_GATEWAY_PATH=str(base / "gw"),
        IB_SETTINGS_PATH=str(shm_dir / "Jts"),
        IBC_CONFIG_DIR=str(shm_dir / "ibc"),
        LAUNCHER_STATE_DIR=str(shm_dir / "state"),
        XVFB_COMMAND="sh -c 'sleep 600' xvfb",  # takes the launcher's arguments (-auth FILE) as $0..$n
        WATCHDOG_INTERVAL_SECONDS="600",
        SHUTDOWN_GRACE_SECONDS="5",
        RECORD_DIR=str(record),
        CONFIG_INI=str(shm_dir / "ibc" / "config.ini"),
        COOKIE_FILE=str(shm_dir / "ibc" / "Xauthority"),
    )
    env.update(extra)
    return env


def login(mode: str, where: Path) -> dict[str, str]:
    if mode == "env":
        return {"IB_USERNAME": USERNAME, "IB_PASSWORD": PASSWORD}
    fd = os.open(where / "password", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(PASSWORD + "\n")
    return {"IB_USERNAME": USERNAME, "IB_PASSWORD_FILE": str(where / "password"), "LOGIN_FILE": str(where / "password")}


def start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    return stderr


@pytest.mark.parametrize("mode", ["env", "file"])
def test_the_login_leaves_the_launchers_own_environment(mode: str, world_dir: Path, shm_dir: Path) -> None:
    out = world_dir / "consumer.json"
    env = base_env(
        world_dir, shm_dir, **login(mode, world_dir), CONSUMER_COMMAND=f"{sys.executable} -c '{FAKE_CONSUMER_PY}' {out}"
    )
    proc = start(env)
    try:
        wait_for(file_written(out, proc), what="the probe's output")
        wait_for(file_written(world_dir / "record" / "gateway.uid", proc), what="gateway.uid to be written")
        launcher_environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        launcher_cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    finally:
        stop(proc)

    seen = json.loads(out.read_text())
    names = {v.split("=", 1)[0] for v in seen["launcher"]}
    assert "PYTHONPATH" in names  # it did read the launcher's environment
    for variables in (names, set(seen["own"])):
        assert not variables & set(CREDENTIAL_VARIABLES)
    for blob in (launcher_environ, launcher_cmdline, json.dumps(seen).encode()):
        assert PASSWORD.encode() not in blob
    assert f"IbPassword={PASSWORD}\n" in (shm_dir / "ibc" / "config.ini").read_text()  # where it belongs


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges to other users needs root")


@pytest.mark.usefixtures("as_root")
@pytest.mark.parametrize("mode", ["env", "file"])
def test_the_consumer_runs_as_its_own_user_and_cannot_read_the_login(mode: str, world_dir: Path, shm_dir: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="launcher-login-"))  # the *_FILE login: root's, 0600
    try:
        consumer = executable(world_dir / "consumer.sh", FAKE_CONSUMER_SH)
        env = base_env(
            world_dir,
            shm_dir,
            **login(mode, private),
            GATEWAY_USER=str(GATEWAY_UID),
            CONSUMER_USER=str(CONSUMER_UID),
            CONSUMER_COMMAND=str(consumer),
        )
        env.setdefault("LOGIN_FILE", str(private / "absent"))
        record = world_dir / "record"
        proc = start(env)
        try:
            wait_for(file_written(record / "consumer.uid", proc), what="consumer.uid to be written")
            wait_for(file_written(record / "gateway.reads_config", proc), what="gateway.reads_config to be written")
            launcher_environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        finally:
            stop(proc)
    finally:
        shutil.rmtree(private, ignore_errors=True)

    assert (record / "gateway.uid").read_text().strip() == str(GATEWAY_UID)
    assert (record / "gateway.reads_config").read_text().strip() == "yes"  # IBC reads it (and on every restart)
    assert (record / "consumer.uid").read_text().strip() == str(CONSUMER_UID)
    assert (record / "consumer.config.result").read_text().strip() == "denied"
    assert (record / "consumer.launcher_environ.result").read_text().strip() == "denied"
    assert (record / "consumer.login_file.result").read_text().strip() == "denied"
    assert (record / "consumer.display_cookie.result").read_text().strip() == "denied"  # the gateway's X display
    assert PASSWORD.encode() not in launcher_environ

    config = shm_dir / "ibc" / "config.ini"
    info, directory = config.stat(), config.parent.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (GATEWAY_UID, 0o600)
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (GATEWAY_UID, 0o700)
    cookie = (shm_dir / "ibc" / "Xauthority").stat()
    assert (cookie.st_uid, stat.S_IMODE(cookie.st_mode)) == (GATEWAY_UID, 0o600)
    jts = (shm_dir / "Jts" / "jts.ini").stat()
    assert jts.st_uid == GATEWAY_UID  # the gateway rewrites its own settings
    for path in record.iterdir():  # nothing the consumer managed to copy holds the password
        assert PASSWORD not in path.read_text(errors="replace")


def test_child_users_are_refused_when_they_would_not_separate_anything() -> None:
    from launcher.users import ChildUsers, RunAs, UserConfigError

    with pytest.raises(UserConfigError, match="same user"):
        ChildUsers.from_env({"GATEWAY_USER": "61001", "CONSUMER_USER": "61001:61002"})
    with pytest.raises(UserConfigError, match="must not run as root"):
        RunAs.parse("0", "CONSUMER_USER")
    with pytest.raises(UserConfigError, match="no such user"):
        RunAs.parse("no-such-user-here", "CONSUMER_USER")
    assert RunAs.parse("61002:61003", "CONSUMER_USER") == RunAs(61002, 61003, None)


def test_a_config_dir_owned_by_someone_else_is_refused(shm_dir: Path, as_root: None) -> None:
    shm_dir.mkdir(mode=0o700)
    os.chown(shm_dir, GATEWAY_UID, GATEWAY_UID)  # e.g. left by a user who could then read or swap the file
    with pytest.raises(ibc.LauncherConfigError, match=f"belongs to uid {GATEWAY_UID}"):
        ibc.write_private(shm_dir / "config.ini", "IbPassword=x\n")
    assert list(shm_dir.iterdir()) == []


def test_the_config_is_created_0600_whatever_the_umask(shm_dir: Path) -> None:
    old = os.umask(0)
    try:
        ibc.write_private(shm_dir / "ibc" / "config.ini", "IbPassword=x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((shm_dir / "ibc" / "config.ini").stat().st_mode) == 0o600
    assert stat.S_IMODE((shm_dir / "ibc").stat().st_mode) == 0o700
