"""`python -m launcher run | health | screenshot | ibc-command COMMAND` (see launcher/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher import (
    EXIT_CHILD_FAILED,
    EXIT_CONFIG,
    EXIT_OK,
    health,
    ibc,
    metadata_firewall,
    metadata_proxy,
    screen,
    xauth,
)
from launcher.aliases import with_aliases
from launcher.logs import log
from launcher.secrets import (
    CREDENTIAL_VARIABLES,
    CredentialError,
    SecretUnavailable,
    resolve_credentials,
    scrubbed_environment,
)
from launcher.supervisor import ChildSpec, Supervisor, Watchdog
from launcher.users import ChildUsers, RunAs, UserConfigError, acting_as

DEFAULT_XVFB = "Xvfb :1 -screen 0 1024x768x24 -nolisten tcp"
DEFAULT_CONSUMER = "consumer serve"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("run", help="render IBC's config, then supervise Xvfb, IBC/IB Gateway and the consumer")
    # Set by the launcher itself when it re-executes without the login in its environment (see `run`).
    start.add_argument("--config-rendered", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("health", help="the HEALTHCHECK; prints a JSON report, exits 0 when healthy")
    commands.add_parser(
        "screenshot", help="the gateway's screen as a PNG on stdout (needs SCREENSHOTS=true; run as the gateway user)"
    )
    send = commands.add_parser("ibc-command", help="send a command (RESTART, STOP ...) to IBC's command server")
    send.add_argument("ibc_command")
    args = parser.parse_args(argv)
    try:
        env = with_aliases(os.environ)
        if args.command == "run":
            return run(env, config_rendered=args.config_rendered)
        if args.command == "health":
            return health_command(env)
        if args.command == "screenshot":
            return screenshot_command(env)
        settings = ibc.GatewaySettings.from_env(env)
        print(ibc.send_command(args.ibc_command.upper(), settings.command_server_port))
        return EXIT_OK
    except (ibc.LauncherConfigError, CredentialError, UserConfigError, metadata_firewall.FirewallError) as e:
        log(f"bad configuration: {e}", severity="CRITICAL")
        return EXIT_CONFIG
    except SecretUnavailable as e:  # restarted by the VM's unit a minute later (exit 2 never would be)
        log(f"cannot start now: {e}", severity="ERROR")
        return EXIT_CHILD_FAILED


def run(env: Mapping[str, str], config_rendered: bool = False) -> int:
    settings = ibc.GatewaySettings.from_env(env)
    users = ChildUsers.from_env(env)
    if not config_rendered:
        render(settings, users, env)
        # /proc/<pid>/environ shows the environment a process was started with; unsetenv() does not change it, and
        # the gateway (or anyone with the launcher's uid) can read it. Only a new image with a new environment
        # drops the login from there, so the launcher re-executes itself without it (same pid, same parent).
        argv = [sys.executable, "-m", "launcher", "run", "--config-rendered"]
        os.execve(sys.executable, argv, scrubbed_environment(env))

    proxy = metadata_proxy.ProxySettings.from_env(env)
    if proxy is not None:  # on the VM: the consumer gets its own account's tokens, and only from the proxy
        keep_metadata_server_from_children(users, env)
        metadata_proxy.serve(metadata_proxy.TokenMinter(proxy))
    supervisor = Supervisor(child_specs(settings, env, users, proxy), watchdog=watchdog(settings, env))
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    return supervisor.run()


def render(settings: ibc.GatewaySettings, users: ChildUsers, env: Mapping[str, str]) -> None:
    """The login into IBC's config.ini (owned by the gateway user, 0600), and out of this process's environment."""
    paths = settings.paths
    if not ibc.is_memory_backed(paths.config_dir) and not _yes(env.get("LAUNCHER_ALLOW_DISK_CONFIG")):
        raise ibc.LauncherConfigError(
            f"IBC_CONFIG_DIR={paths.config_dir} is not on tmpfs: the IB login must never touch a disk "
            "(mount a tmpfs there, or use /dev/shm)"
        )
    credentials = resolve_credentials(env)
    for var in CREDENTIAL_VARIABLES:  # read once: nothing in this process needs them again
        os.environ.pop(var, None)
    with acting_as(users.gateway):
        ibc.write_private(paths.config_ini, ibc.render_config_ini(settings, credentials))
        ibc.write_private(paths.settings / "jts.ini", ibc.render_jts_ini(settings))
        xauth.write_cookie(_cookie_file(settings), _display(env))
        if _yes(env.get("SCREENSHOTS")):
            Path(_screen_dir(env)).mkdir(mode=0o700, parents=True, exist_ok=True)
    log("IBC configuration written", credentials_from=credentials.source, **settings.describe())
    del credentials


def keep_metadata_server_from_children(users: ChildUsers, env: Mapping[str, str]) -> None:
    """Before any child starts: the metadata server would give them the VM's token, which can read the IB login."""
    try:
        if users.consumer is None:
            raise metadata_firewall.FirewallError("CONSUMER_USER is unset, so the consumer runs as the launcher")
        uids = [u.uid for u in (users.consumer, users.gateway) if u is not None]
        metadata_firewall.install(uids, iptables=env.get("IPTABLES", "") or "iptables")
    except metadata_firewall.FirewallError as e:
        if not _yes(env.get("METADATA_FIREWALL_OPTIONAL")):
            raise metadata_firewall.FirewallError(
                f"cannot keep the metadata server from the consumer: {e}; run the container with "
                "--cap-add=NET_ADMIN and CONSUMER_USER set, or set METADATA_FIREWALL_OPTIONAL=yes to accept that the "
                "consumer can read the IB login"
            ) from None
        log("the consumer can reach the metadata server (METADATA_FIREWALL_OPTIONAL)", severity="WARNING", error=str(e))
        return
    log("metadata server firewalled from the children", uids=uids)


def child_specs(
    settings: ibc.GatewaySettings,
    env: Mapping[str, str],
    users: ChildUsers | None = None,
    proxy: metadata_proxy.ProxySettings | None = None,
) -> list[ChildSpec]:
    users = users or ChildUsers()
    base = scrubbed_environment(env)
    display = _display(env)
    cookie = str(_cookie_file(settings))
    xvfb = [*shlex.split(env.get("XVFB_COMMAND", DEFAULT_XVFB)), "-auth", cookie]
    if _yes(env.get("SCREENSHOTS")):
        xvfb += screen.xvfb_arguments(_screen_dir(env))
    gateway_env = {**_home(base, users.gateway), "DISPLAY": display, "XAUTHORITY": cookie}
    consumer_env = {**_home(base, users.consumer), "IB_HOST": ibc.LOCALHOST, "IB_PORT": str(settings.api_port)}
    if proxy is not None:  # google-auth reads both: the host for requests, the IP for its ping
        consumer_env |= {"GCE_METADATA_HOST": proxy.host, "GCE_METADATA_IP": proxy.host}
    grace = float(env.get("SHUTDOWN_GRACE_SECONDS", "30") or 30)
    return [
        ChildSpec("xvfb", xvfb, env=gateway_env, settle=1.0, backoff_initial=1, backoff_max=30, user=users.gateway),
        ChildSpec(
            "gateway",
            ibc.ibcstart_command(settings, settings.paths.config_ini),
            env=gateway_env,
            user=users.gateway,
            # IB's login servers do not like being hammered: slow backoff, few tries, then the container restarts.
            backoff_initial=30,
            backoff_max=600,
            max_restarts=int(env.get("GATEWAY_MAX_RESTARTS", "4") or 4),
            stop_timeout=60,
        ),
        ChildSpec(
            "consumer",
            shlex.split(env.get("CONSUMER_COMMAND", DEFAULT_CONSUMER)),
            env=consumer_env,
            user=users.consumer,
            backoff_initial=5,
            backoff_max=120,
            max_restarts=int(env.get("CONSUMER_MAX_RESTARTS", "10") or 10),
            stop_timeout=grace + 15,
            exit_codes_fatal={EXIT_CONFIG: EXIT_CONFIG},  # `consumer` exits 2 on a bad setting
        ),
    ]


def watchdog(settings: ibc.GatewaySettings, env: Mapping[str, str]) -> Watchdog:
    health_port = int(env.get("HEALTH_PORT", "8080") or 8080)

    def probe() -> bool:
        gateway = health.tcp_accepting(ibc.LOCALHOST, settings.api_port)
        return gateway and health.http_status(f"http://{ibc.LOCALHOST}:{health_port}/livez") == 200

    def soft_restart() -> None:
        if not health.tcp_accepting(ibc.LOCALHOST, settings.api_port):
            reply = ibc.send_command("RESTART", settings.command_server_port)
            log("asked IBC to restart the gateway", reply=reply)

    return Watchdog(
        probe=probe,
        interval=float(env.get("WATCHDOG_INTERVAL_SECONDS", "30") or 30),
        soft_after=float(env.get("WATCHDOG_SOFT_RESTART_SECONDS", "1200") or 1200),
        exit_after=float(env.get("WATCHDOG_EXIT_SECONDS", "2700") or 2700),
        soft_action=soft_restart,
    )


def health_command(env: Mapping[str, str]) -> int:
    settings = ibc.GatewaySettings.from_env(env)
    report = health.check(
        api_port=settings.api_port,
        health_port=int(env.get("HEALTH_PORT", "8080") or 8080),
        state=health.DownSince(Path(settings.paths.state_dir) / "health.json"),
        grace=float(env.get("HEALTH_GATEWAY_GRACE_SECONDS", health.DEFAULT_GRACE_SECONDS)),
    )
    print(json.dumps(report.as_dict()))
    return 0 if report.healthy else 1


def screenshot_command(env: Mapping[str, str]) -> int:
    try:
        png = screen.screenshot(_screen_dir(env))
    except screen.ScreenError as e:
        print(f"launcher screenshot: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(png)
    sys.stdout.buffer.flush()
    return EXIT_OK


def _display(env: Mapping[str, str]) -> str:
    return env.get("DISPLAY") or ":1"


def _cookie_file(settings: ibc.GatewaySettings) -> Path:
    """Beside the login, on tmpfs, the gateway user's alone (launcher/xauth.py)."""
    return settings.paths.config_dir / "Xauthority"


def _screen_dir(env: Mapping[str, str]) -> str:
    return env.get("SCREEN_DIR") or screen.DEFAULT_SCREEN_DIR


def _home(env: Mapping[str, str], user: RunAs | None) -> dict[str, str]:
    return {**env, "HOME": user.home} if user is not None and user.home else dict(env)


def _yes(raw: str | None) -> bool:
    return (raw or "").strip().lower() in {"1", "yes", "true", "on"}


if __name__ == "__main__":
    sys.exit(main())
