"""The metadata server kept from the children: an iptables rule per child uid, installed by the launcher (root).

The metadata server hands the VM account's token (which can read the IB login) to any process that asks. The
consumer gets its own account's tokens from launcher/metadata_proxy.py instead; this rule makes sure it cannot go
around the proxy. The gateway gets the same rule: it needs no Google Cloud token at all. Installing the rule needs
CAP_NET_ADMIN (`docker run --cap-add=NET_ADMIN`) and the iptables package; without them the launcher refuses to start
the children unless METADATA_FIREWALL_OPTIONAL=yes says the operator accepts it (docs/deployment.md).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence

METADATA_IP = "169.254.169.254"  # metadata.google.internal; the container network has no IPv6


class FirewallError(ValueError):
    """The rule could not be installed; one line that says why and what to do."""


def rule(uid: int) -> list[str]:
    return ["-d", METADATA_IP, "-m", "owner", "--uid-owner", str(uid), "-j", "REJECT"]


def install(uids: Iterable[int], iptables: str = "iptables") -> None:
    """First in OUTPUT (an ACCEPT before it cannot undo it); once per uid, so a relaunch adds no duplicate."""
    for uid in uids:
        if _run([iptables, "-w", "-C", "OUTPUT", *rule(uid)]) == 0:
            continue
        if (code := _run([iptables, "-w", "-I", "OUTPUT", "1", *rule(uid)], capture=True)) != 0:
            raise FirewallError(f"iptables could not add the metadata server rule for uid {uid} ({code})")


def _run(argv: Sequence[str], capture: bool = False) -> int | str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FirewallError(f"cannot run {argv[0]}: {type(e).__name__}: {e}") from None
    if done.returncode == 0 or not capture:
        return done.returncode
    return " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"


__all__ = ["METADATA_IP", "FirewallError", "install", "rule"]
