"""Who each child runs as: the gateway (IBC, Xvfb) as GATEWAY_USER, the consumer as CONSUMER_USER.

The consumer must not be able to read IBC's config.ini (the IB login) or the gateway's settings, so it runs as a
user of its own: config.ini is 0600 in a 0700 directory owned by the gateway user. Switching users needs the launcher
to run as root with CAP_SETUID, CAP_SETGID (and CAP_KILL to stop children of other users); unset variables mean
"run as the launcher's own user" (local runs and most tests).
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator, Mapping
from dataclasses import dataclass


class UserConfigError(ValueError):
    """A *_USER variable is malformed or cannot be honoured; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RunAs:
    uid: int
    gid: int
    home: str | None = None

    @classmethod
    def parse(cls, raw: str, var: str) -> RunAs:
        """`name`, `uid` or `uid:gid`; a name or a uid with a passwd entry brings its group and home."""
        raw = raw.strip()
        name, _, group = raw.partition(":")
        entry: pwd.struct_passwd | None
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is None and not name.isdigit():
            raise UserConfigError(f"{var}={raw!r}: no such user")
        uid = entry.pw_uid if entry is not None else int(name)
        if group:
            if not group.isdigit():
                raise UserConfigError(f"{var}={raw!r}: the group must be numeric (uid:gid)")
            gid = int(group)
        else:
            gid = entry.pw_gid if entry is not None else uid
        if uid == 0 or gid == 0:
            raise UserConfigError(f"{var}={raw!r}: a child must not run as root")
        return cls(uid, gid, entry.pw_dir if entry is not None else None)


@dataclass(frozen=True, slots=True)
class ChildUsers:
    gateway: RunAs | None = None
    consumer: RunAs | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ChildUsers:
        gateway = _user(env, "GATEWAY_USER")
        consumer = _user(env, "CONSUMER_USER")
        if gateway and consumer and gateway.uid == consumer.uid:
            raise UserConfigError("GATEWAY_USER and CONSUMER_USER are the same user: the consumer could read the login")
        switching = [u for u in (gateway, consumer) if u is not None and u.uid != os.geteuid()]
        if switching and os.geteuid() != 0:
            raise UserConfigError(
                "GATEWAY_USER / CONSUMER_USER need the launcher to start as root (with CAP_SETUID, CAP_SETGID and "
                "CAP_KILL): it runs each child as its user"
            )
        return cls(gateway, consumer)


@contextlib.contextmanager
def acting_as(user: RunAs | None) -> Iterator[None]:
    """Files created inside belong to `user` (effective ids only, so the launcher can switch back afterwards)."""
    if user is None or user.uid == os.geteuid():
        yield
        return
    euid, egid = os.geteuid(), os.getegid()
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(euid)
        os.setegid(egid)


def _user(env: Mapping[str, str], var: str) -> RunAs | None:
    raw = env.get(var, "").strip()
    return RunAs.parse(raw, var) if raw else None


__all__ = ["ChildUsers", "RunAs", "UserConfigError", "acting_as"]
