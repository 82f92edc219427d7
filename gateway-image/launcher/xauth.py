"""The gateway's X display, for the gateway alone: an MIT-MAGIC-COOKIE-1 that Xvfb requires (`-auth FILE`) and only
the gateway user can read.

Xvfb without `-auth` admits any local client over its Unix socket, and `-nolisten tcp` does not change that: the
consumer (or anything else on the VM) could read the screen, watch the login dialog, or send the gateway's Swing UI
keys and clicks (turn off Read-Only API, accept a dialog). The file is an Xauthority file (what `xauth` writes,
read by Xvfb and by the gateway's Xlib through XAUTHORITY), written here so the image needs no `xauth` package.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from launcher.ibc import write_private

COOKIE_NAME = b"MIT-MAGIC-COOKIE-1"
FAMILY_WILD = 0xFFFF  # any host: the display is reached over the local socket only (-nolisten tcp)


@dataclass(frozen=True)
class Entry:
    family: int
    address: bytes
    number: str
    name: bytes
    data: bytes


def display_number(display: str) -> str:
    """':1' -> '1', ':1.0' -> '1', 'host:3' -> '3'."""
    return display.rpartition(":")[2].partition(".")[0]


def entry_bytes(entry: Entry) -> bytes:
    def counted(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    return struct.pack(">H", entry.family) + b"".join(
        counted(b) for b in (entry.address, entry.number.encode(), entry.name, entry.data)
    )


def parse(data: bytes) -> list[Entry]:
    entries: list[Entry] = []
    at = 0
    while at < len(data):
        (family,) = struct.unpack_from(">H", data, at)
        at += 2
        fields: list[bytes] = []
        for _ in range(4):
            (length,) = struct.unpack_from(">H", data, at)
            fields.append(data[at + 2 : at + 2 + length])
            at += 2 + length
        entries.append(Entry(family, fields[0], fields[1].decode(), fields[2], fields[3]))
    return entries


def write_cookie(path: Path, display: str) -> None:
    """A fresh random cookie for `display`, mode 0600 in a 0700 directory of the effective user (the gateway's)."""
    entry = Entry(FAMILY_WILD, b"", display_number(display), COOKIE_NAME, os.urandom(16))
    write_private(path, entry_bytes(entry))
