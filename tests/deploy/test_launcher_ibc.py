"""IBC's config.ini and the gateway's jts.ini: what is rendered, how it is escaped, where and how it is written."""

from __future__ import annotations

import socket
import stat
import threading
import uuid
from pathlib import Path

import pytest
from launcher import ibc
from launcher.secrets import Credentials, Secret

PASSWORD = "pa\\ss wörd=1"


def creds(password: str = PASSWORD) -> Credentials:
    return Credentials(Secret("trader1"), Secret(password), "env")


def parse_ini(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_paper_defaults() -> None:
    s = ibc.GatewaySettings.from_env({})
    assert (s.trading_mode, s.api_port, s.read_only_api) == ("paper", 4002, False)
    ini = parse_ini(ibc.render_config_ini(s, creds("plain")))
    assert ini["TradingMode"] == "paper"
    assert ini["IbLoginId"] == "trader1"
    assert ini["IbPassword"] == "plain"
    assert ini["OverrideTwsApiPort"] == "4002"
    assert ini["TrustedTwsApiClientIPs"] == "127.0.0.1"
    assert ini["AcceptIncomingConnectionAction"] == "reject"
    assert ini["ReadOnlyApi"] == "no"
    assert ini["AutoRestartTime"] == "11:45 PM"
    assert ini["ColdRestartTime"] == "07:05"
    assert ini["ExistingSessionDetectedAction"] == "primary"
    assert ini["ReloginAfterSecondFactorAuthenticationTimeout"] == "yes"
    assert ini["ExitAfterSecondFactorAuthenticationTimeout"] == "no"
    assert ini["CommandServerPort"] == "7462"
    assert ini["BindAddress"] == "127.0.0.1"
    assert ini["ControlFrom"] == ""
    assert ini["AllowBlindTrading"] == "no"
    # ibsim's built-in gateway is this one (precautions.bypass): orders over the presets are not refused (383/451)
    assert ini["BypassOrderPrecautions"] == "yes"
    assert ini["FIX"] == "no"


def test_the_gateways_order_precautions_can_be_kept() -> None:
    kept = ibc.GatewaySettings.from_env({"IBC_BYPASS_ORDER_PRECAUTIONS": "no"})
    assert parse_ini(ibc.render_config_ini(kept, creds()))["BypassOrderPrecautions"] == "no"


def test_live_is_read_only_unless_asked_twice() -> None:
    live = ibc.GatewaySettings.from_env({"TRADING_MODE": "live"})
    assert (live.api_port, live.read_only_api) == (4001, True)
    assert parse_ini(ibc.render_config_ini(live, creds()))["ReadOnlyApi"] == "yes"
    trading = ibc.GatewaySettings.from_env({"TRADING_MODE": "LIVE", "IB_READ_ONLY_API": "no"})
    assert (trading.trading_mode, trading.read_only_api) == ("live", False)
    assert parse_ini(ibc.render_config_ini(trading, creds()))["TradingMode"] == "live"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TRADING_MODE": "demo"}, "TRADING_MODE"),
        ({"IB_PORT": "4001"}, "IB_PORT"),
        ({"IBC_AUTO_RESTART_TIME": "23:45"}, "IBC_AUTO_RESTART_TIME"),
        ({"IBC_COLD_RESTART_TIME": "7 AM"}, "IBC_COLD_RESTART_TIME"),
        ({"IBC_EXISTING_SESSION_ACTION": "kick"}, "IBC_EXISTING_SESSION_ACTION"),
        ({"TWOFA_TIMEOUT_ACTION": "retry"}, "TWOFA_TIMEOUT_ACTION"),
        ({"IB_READ_ONLY_API": "maybe"}, "IB_READ_ONLY_API"),
        ({"IBC_COMMAND_SERVER_PORT": "80"}, "IBC_COMMAND_SERVER_PORT"),
    ],
)
def test_bad_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ibc.LauncherConfigError, match=variable):
        ibc.GatewaySettings.from_env(env)


def test_matching_ib_port_and_a_disabled_cold_restart_are_fine() -> None:
    s = ibc.GatewaySettings.from_env({"IB_PORT": "4002", "IBC_COLD_RESTART_TIME": "", "TWOFA_TIMEOUT_ACTION": "exit"})
    assert s.cold_restart_time == "07:05"  # empty means the default, as with every other variable
    off = ibc.GatewaySettings.from_env({"IBC_COLD_RESTART_TIME": "off"})
    assert parse_ini(ibc.render_config_ini(off, creds()))["ColdRestartTime"] == ""
    no_relogin = ibc.GatewaySettings.from_env({"IBC_RELOGIN_AFTER_2FA_TIMEOUT": "no"})
    assert parse_ini(ibc.render_config_ini(no_relogin, creds()))["ExitAfterSecondFactorAuthenticationTimeout"] == "yes"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("back\\slash", "back\\\\slash"),
        (" leading", "\\ leading"),
        ("inner space", "inner space"),
        ("wörd", "w\\u00f6rd"),
        ("emoji😀", "emoji\\ud83d\\ude00"),
        ("a=b:c#!", "a=b:c#!"),
    ],
)
def test_values_are_escaped_for_java_properties(raw: str, escaped: str) -> None:
    assert ibc.properties_escape(raw) == escaped


def test_a_line_break_cannot_inject_a_setting() -> None:
    with pytest.raises(ValueError, match="line break"):
        ibc.render_config_ini(ibc.GatewaySettings(), creds("x\nReadOnlyApi=no"))


def test_jts_ini_trusts_localhost_only() -> None:
    text = ibc.render_jts_ini(ibc.GatewaySettings())
    assert "TrustedIPs=127.0.0.1\n" in text
    assert "ApiOnly=true\n" in text
    assert "TimeZone=America/New_York\n" in text


def test_config_is_written_0600_in_a_0700_directory_on_tmpfs() -> None:
    base = Path("/dev/shm")
    if not ibc.is_memory_backed(base):
        pytest.skip("/dev/shm is not tmpfs here")
    target = base / f"launcher-test-{uuid.uuid4().hex}" / "ibc" / "config.ini"
    try:
        ibc.write_private(target, "IbPassword=x\n")
        ibc.write_private(target, "IbPassword=y\n")  # rewritten on every start, atomically
        assert target.read_text() == "IbPassword=y\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
        assert [p.name for p in target.parent.iterdir()] == ["config.ini"]
        assert ibc.is_memory_backed(target.parent)
    finally:
        for p in sorted(target.parents[1].rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        target.parents[1].rmdir()


def test_filesystem_type_picks_the_longest_mount_point() -> None:
    mounts = "overlay / overlay rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n/dev/sda1 /dev/shm/disk ext4 rw 0 0\n"
    assert ibc.filesystem_type(Path("/dev/shm/ibc"), mounts) == "tmpfs"
    assert ibc.filesystem_type(Path("/dev/shm/disk/ibc"), mounts) == "ext4"
    assert ibc.filesystem_type(Path("/dev/shmx"), mounts) == "overlay"
    assert not ibc.is_memory_backed(Path("/home/ibgateway"), mounts)


def test_ibcstart_command_keeps_the_login_off_the_command_line() -> None:
    s = ibc.GatewaySettings.from_env({"IB_GATEWAY_BUILD": "1050", "TRADING_MODE": "paper"})
    argv = ibc.ibcstart_command(s, Path("/dev/shm/ibc/config.ini"))
    assert argv[:3] == ["/opt/ibc/scripts/ibcstart.sh", "1050", "--gateway"]
    assert "--ibc-ini=/dev/shm/ibc/config.ini" in argv
    assert "--mode=paper" in argv
    assert "--tws-path=/opt/ibgateway" in argv
    assert "--on2fatimeout=restart" in argv
    assert not any(a.startswith(("--user", "--pw")) for a in argv)
    with pytest.raises(ibc.LauncherConfigError, match="IB_GATEWAY_BUILD"):
        ibc.ibcstart_command(ibc.GatewaySettings(), Path("/x"))


def test_send_command_talks_to_a_real_command_server() -> None:
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"EXIT\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
                if data == b"RESTART\n":
                    conn.sendall(b"OK\n")
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ibc.send_command("RESTART", port, timeout=5) == "OK"
        thread.join(5)
        assert received == [b"RESTART\nEXIT\n"]
    finally:
        server.close()
    with pytest.raises(ValueError, match="not an IBC command"):
        ibc.send_command("restart; rm -rf /", port)
