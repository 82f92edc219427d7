"""IBC and IB Gateway settings: parsed from the environment, rendered into IBC's config.ini and the gateway's jts.ini.

config.ini holds the IB login, so it is written only into a memory-backed directory (/dev/shm by default), in a
0700 directory with mode 0600, and it must stay there while the container runs: IBC re-reads it on every nightly
auto-restart.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.secrets import Credentials

API_PORTS = {"paper": 4002, "live": 4001}
LOCALHOST = "127.0.0.1"

_TIME_12H = re.compile(r"^(0[1-9]|1[0-2]):[0-5][0-9] (AM|PM)$")
_TIME_24H = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_SESSION_ACTIONS = ("primary", "primaryoverride", "secondary", "manual")
_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off"}


class LauncherConfigError(ValueError):
    """A launcher setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Paths:
    ibc: Path = Path("/opt/ibc")
    gateway: Path = Path("/opt/ibgateway")  # holds ibgateway/<build>/jars, the layout ibcstart.sh expects
    gateway_build: str = ""  # e.g. 1050 for 10.50: baked into the image by the Dockerfile
    settings: Path = Path("/home/ibgateway/Jts")  # jts.ini and the gateway's own settings (no secrets)
    config_dir: Path = Path("/dev/shm/ibc")  # config.ini with the login: memory only
    state_dir: Path = Path("/dev/shm/launcher")  # the healthcheck's small state file

    @property
    def config_ini(self) -> Path:
        return self.config_dir / "config.ini"


@dataclass(frozen=True)
class GatewaySettings:
    trading_mode: str = "paper"
    read_only_api: bool = False
    auto_restart_time: str = "11:45 PM"
    cold_restart_time: str = "07:05"
    existing_session_action: str = "primary"
    twofa_timeout_action: str = "restart"
    relogin_after_2fa_timeout: bool = True
    second_factor_exit_interval: int = 60
    allow_blind_trading: bool = False
    bypass_order_precautions: bool = True
    command_server_port: int = 7462
    login_dialog_timeout: int = 60
    time_zone: str = "America/New_York"
    paths: Paths = field(default_factory=Paths)

    @property
    def api_port(self) -> int:
        return API_PORTS[self.trading_mode]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GatewaySettings:
        mode = _get(env, "TRADING_MODE", "paper").lower()
        if mode not in API_PORTS:
            raise LauncherConfigError(f"TRADING_MODE={mode!r}: expected paper or live")
        # Live defaults to a read-only API: placing live orders takes a second, explicit IB_READ_ONLY_API=no.
        read_only = _flag(env, "IB_READ_ONLY_API", default=(mode == "live"))
        auto_restart = _get(env, "IBC_AUTO_RESTART_TIME", cls.auto_restart_time).upper()
        if not _TIME_12H.match(auto_restart):
            raise LauncherConfigError(f"IBC_AUTO_RESTART_TIME={auto_restart!r}: expected hh:mm AM/PM, e.g. 11:45 PM")
        cold = _get(env, "IBC_COLD_RESTART_TIME", cls.cold_restart_time)
        if cold.lower() in ("off", "none"):
            cold = ""
        elif not _TIME_24H.match(cold):
            raise LauncherConfigError(f"IBC_COLD_RESTART_TIME={cold!r}: expected HH:MM (24 h, on Sundays) or off")
        session = _get(env, "IBC_EXISTING_SESSION_ACTION", cls.existing_session_action).lower()
        if session not in _SESSION_ACTIONS:
            expected = ", ".join(_SESSION_ACTIONS)
            raise LauncherConfigError(f"IBC_EXISTING_SESSION_ACTION={session!r}: expected {expected}")
        twofa = _get(env, "TWOFA_TIMEOUT_ACTION", cls.twofa_timeout_action).lower()
        if twofa not in ("restart", "exit"):
            raise LauncherConfigError(f"TWOFA_TIMEOUT_ACTION={twofa!r}: expected restart or exit")
        ib_port = env.get("IB_PORT")
        if ib_port and ib_port.strip() != str(API_PORTS[mode]):
            raise LauncherConfigError(
                f"IB_PORT={ib_port} disagrees with TRADING_MODE={mode} (the gateway listens on {API_PORTS[mode]}); "
                "leave IB_PORT unset in the container"
            )
        paths = Paths(
            ibc=Path(_get(env, "IBC_PATH", str(Paths.ibc))),
            gateway=Path(_get(env, "IB_GATEWAY_PATH", str(Paths.gateway))),
            gateway_build=_get(env, "IB_GATEWAY_BUILD", ""),
            settings=Path(_get(env, "IB_SETTINGS_PATH", str(Paths.settings))),
            config_dir=Path(_get(env, "IBC_CONFIG_DIR", str(Paths.config_dir))),
            state_dir=Path(_get(env, "LAUNCHER_STATE_DIR", str(Paths.state_dir))),
        )
        return cls(
            trading_mode=mode,
            read_only_api=read_only,
            auto_restart_time=auto_restart,
            cold_restart_time=cold,
            existing_session_action=session,
            twofa_timeout_action=twofa,
            relogin_after_2fa_timeout=_flag(env, "IBC_RELOGIN_AFTER_2FA_TIMEOUT", default=True),
            second_factor_exit_interval=_int(env, "IBC_2FA_EXIT_INTERVAL", 60, 10, 3600),
            allow_blind_trading=_flag(env, "IBC_ALLOW_BLIND_TRADING", default=False),
            bypass_order_precautions=_flag(env, "IBC_BYPASS_ORDER_PRECAUTIONS", default=True),
            command_server_port=_int(env, "IBC_COMMAND_SERVER_PORT", 7462, 1024, 65535),
            login_dialog_timeout=_int(env, "IBC_LOGIN_DIALOG_TIMEOUT", 60, 10, 600),
            time_zone=_get(env, "TZ", cls.time_zone),
            paths=paths,
        )

    def describe(self) -> dict[str, Any]:
        """Loggable: there is no secret in the settings (the login lives in Credentials)."""
        return {
            "trading_mode": self.trading_mode,
            "api_port": self.api_port,
            "read_only_api": self.read_only_api,
            "auto_restart_time": self.auto_restart_time,
            "cold_restart_time": self.cold_restart_time or None,
            "existing_session_action": self.existing_session_action,
            "twofa_timeout_action": self.twofa_timeout_action,
            "gateway_build": self.paths.gateway_build,
            "config_dir": str(self.paths.config_dir),
        }


def render_config_ini(settings: GatewaySettings, credentials: Credentials) -> str:
    """IBC's config.ini. Values are escaped for java.util.Properties (IBC loads the file that way, ISO-8859-1)."""
    yes_no = {True: "yes", False: "no"}
    entries: list[tuple[str, str]] = [
        ("IbLoginId", credentials.username.reveal()),
        ("IbPassword", credentials.password.reveal()),
        ("TradingMode", settings.trading_mode),
        ("FIX", "no"),
        # Login unattended; a second factor (live accounts) is pushed to IBKR Mobile and retried on timeout.
        ("ReloginAfterSecondFactorAuthenticationTimeout", yes_no[settings.relogin_after_2fa_timeout]),
        ("SecondFactorAuthenticationExitInterval", str(settings.second_factor_exit_interval)),
        # Without in-process relogin, IBC exits on a 2FA timeout; ibcstart.sh then does TWOFA_TIMEOUT_ACTION.
        ("ExitAfterSecondFactorAuthenticationTimeout", yes_no[not settings.relogin_after_2fa_timeout]),
        ("LoginDialogDisplayTimeout", str(settings.login_dialog_timeout)),
        ("ExistingSessionDetectedAction", settings.existing_session_action),
        ("AcceptNonBrokerageAccountWarning", "yes"),
        ("ReadOnlyLogin", "no"),
        ("ReadOnlyApi", yes_no[settings.read_only_api]),
        # The API: our port on every start, only 127.0.0.1 trusted, any other client refused without a dialog.
        ("OverrideTwsApiPort", str(settings.api_port)),
        ("TrustedTwsApiClientIPs", LOCALHOST),
        ("AcceptIncomingConnectionAction", "reject"),
        ("AllowBlindTrading", yes_no[settings.allow_blind_trading]),
        # Left on, the gateway refuses every API order over its presets (500 shares, 100,000 USD) with 383 / 451:
        # nobody can confirm them on a headless gateway, and the consumer's own risk limits are the check.
        ("BypassOrderPrecautions", yes_no[settings.bypass_order_precautions]),
        ("DismissPasswordExpiryWarning", "no"),
        ("DismissNSEComplianceNotice", "yes"),
        ("SaveTwsSettingsAt", ""),
        ("StoreSettingsOnServer", "no"),
        ("MinimizeMainWindow", "no"),
        ("IbDir", str(settings.paths.settings)),
        # Restarts: daily in-session restart (no re-login) and a Sunday cold restart with a full login.
        ("AutoRestartTime", settings.auto_restart_time),
        ("ColdRestartTime", settings.cold_restart_time),
        ("ClosedownAt", ""),
        ("AutoLogoffTime", ""),
        # Command server on localhost only: `python -m launcher ibc-command RESTART` for a soft restart.
        ("CommandServerPort", str(settings.command_server_port)),
        ("ControlFrom", ""),
        ("BindAddress", LOCALHOST),
        ("CommandPrompt", ""),
        ("SuppressInfoMessages", "yes"),
        ("LogStructureScope", "known"),
        ("LogStructureWhen", "never"),
    ]
    lines = ["# Rendered by the launcher at container start. Lives in memory only; never commit or copy it."]
    lines += [f"{key}={properties_escape(value)}" for key, value in entries]
    return "\n".join(lines) + "\n"


def render_jts_ini(settings: GatewaySettings) -> str:
    """The gateway's own settings: API clients trusted from 127.0.0.1 only, API-only mode, time zone."""
    return (
        "[IBGateway]\n"
        "WriteDebug=false\n"
        f"TrustedIPs={LOCALHOST}\n"
        "ApiOnly=true\n"
        "LocalServerPort=4000\n"
        "\n"
        "[Logon]\n"
        "Locale=en\n"
        f"TimeZone={settings.time_zone}\n"
        "UseSSL=true\n"
        "s3store=false\n"
        "useRemoteSettings=false\n"
    )


def properties_escape(value: str) -> str:
    """Escapes a value for java.util.Properties.load (ISO-8859-1): backslashes, a leading space, non-ASCII."""
    out = []
    for i, ch in enumerate(value):
        if ch == "\\":
            out.append("\\\\")
        elif ch == " " and i == 0:
            out.append("\\ ")
        elif ch in "\r\n\x00":
            raise ValueError("a line break or NUL cannot be written into config.ini")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:
            out.extend(f"\\u{unit:04x}" for unit in _utf16_units(ch))
        else:
            out.append(ch)
    return "".join(out)


def _utf16_units(ch: str) -> list[int]:
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def write_private(path: Path, text: str | bytes) -> None:
    """Writes text or bytes with mode 0600 in a 0700 directory, atomically; never readable by anyone else, even
    briefly.

    The file is created 0600 by open(2) itself (no chmod after writing, so no umask or race can widen it), owned by
    the effective user (see `acting_as`), in a directory that user owns: a directory owned by anyone else is refused
    rather than trusted, since its owner could read or swap the file.
    """
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.geteuid():
        raise LauncherConfigError(f"{directory} belongs to uid {directory.stat().st_uid}, not {os.geteuid()}")
    os.chmod(directory, 0o700)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding path (longest mount point prefix in /proc/self/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, parts[2]
    return best_type


def is_memory_backed(path: Path, mounts: str | None = None) -> bool:
    return filesystem_type(path, mounts) in {"tmpfs", "ramfs"}


def ibcstart_command(settings: GatewaySettings, config_ini: Path) -> list[str]:
    """IBC's own start script, in the foreground (-inline); the login is in config.ini, not on the command line."""
    p = settings.paths
    if not p.gateway_build:
        raise LauncherConfigError("IB_GATEWAY_BUILD is not set (the image sets it to the installed gateway build)")
    return [
        str(p.ibc / "scripts" / "ibcstart.sh"),
        p.gateway_build,
        "--gateway",
        f"--mode={settings.trading_mode}",
        f"--tws-path={p.gateway}",
        f"--tws-settings-path={p.settings}",
        f"--ibc-path={p.ibc}",
        f"--ibc-ini={config_ini}",
        f"--on2fatimeout={settings.twofa_timeout_action}",
    ]


def send_command(command: str, port: int, host: str = LOCALHOST, timeout: float = 10.0) -> str:
    """Sends one command (RESTART, STOP, RECONNECTACCOUNT ...) to IBC's command server; returns its first reply."""
    if not re.fullmatch(r"[A-Z]+( [A-Za-z0-9_ -]+)?", command):
        raise ValueError(f"not an IBC command: {command!r}")
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(command.encode("ascii") + b"\n")
        conn.settimeout(timeout)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = conn.recv(1024)
            if not chunk:
                break
            reply += chunk
        conn.sendall(b"EXIT\n")
    return reply.decode("utf-8", "replace").strip()


def _get(env: Mapping[str, str], var: str, default: str) -> str:
    raw = env.get(var)
    return default if raw is None or raw.strip() == "" else raw.strip()


def _flag(env: Mapping[str, str], var: str, default: bool) -> bool:
    raw = env.get(var, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise LauncherConfigError(f"{var}={raw!r}: expected yes or no")


def _int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LauncherConfigError(f"{var}={raw!r}: expected an integer") from None
    if not low <= value <= high:
        raise LauncherConfigError(f"{var}={value}: expected {low}..{high}")
    return value
