"""The variable names of the gateway images people already run (gnzsnz/ib-gateway-docker, UnusualAlpha's
ib-gateway-docker), accepted as aliases of ours, so a compose file or an env file moves over unchanged.

An alias and our own name both set to different values is refused: guessing which one was meant is worse than not
starting. A variable of theirs this image has no equivalent for is refused with the reason, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from launcher.ibc import LauncherConfigError

# theirs -> ours (docs/deployment.md, "Coming from another gateway image")
ALIASES: dict[str, str] = {
    "TWS_USERID": "IB_USERNAME",
    "TWS_PASSWORD": "IB_PASSWORD",
    "TWS_PASSWORD_FILE": "IB_PASSWORD_FILE",
    "TIME_ZONE": "TZ",
    "AUTO_RESTART_TIME": "IBC_AUTO_RESTART_TIME",
    "READ_ONLY_API": "IB_READ_ONLY_API",
    "TWS_SETTINGS_PATH": "IB_SETTINGS_PATH",
    # TWOFA_TIMEOUT_ACTION has the same name and values (restart, exit) here.
}
UNSUPPORTED: dict[str, str] = {
    "JAVA_HEAP_SIZE": "this image keeps the gateway's own ibgateway.vmoptions (-Xmx768m); remove JAVA_HEAP_SIZE",
}
# Aliases that carry the login: scrubbed from every child's environment like ours.
CREDENTIAL_ALIASES = ("TWS_USERID", "TWS_PASSWORD", "TWS_PASSWORD_FILE")


def with_aliases(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with each alias copied to our name; the aliases stay (the login ones are scrubbed later)."""
    result = dict(env)
    for theirs, why in UNSUPPORTED.items():
        if env.get(theirs, "").strip():
            raise LauncherConfigError(f"{theirs} is not supported: {why}")
    for theirs, ours in ALIASES.items():
        value = env.get(theirs)
        if value is None or value.strip() == "":
            continue
        mine = env.get(ours)
        if mine is not None and mine.strip() != "" and mine != value:
            raise LauncherConfigError(f"{theirs} (alias of {ours}) and {ours} are both set, differently: set one")
        result[ours] = value
    return result
