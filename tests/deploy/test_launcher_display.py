"""The gateway's X display admits the gateway alone: Xvfb runs with an MIT-MAGIC-COOKIE-1 only the gateway user can
read, so the consumer (or anything else on the VM) cannot watch the login dialog, read the screen or send the
gateway's Swing UI clicks and keys (turning off Read-Only API, accepting a dialog). Proved with a real Xvfb and the
X11 connection handshake itself, as a client without the cookie would try it."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from launcher import xauth

from tests.deploy.test_launcher_run import launcher_env
from tests.support import file_written, wait_for

COOKIE = b"MIT-MAGIC-COOKIE-1"


def x11_handshake(display: str, name: bytes = b"", data: bytes = b"") -> tuple[int, str]:
    """The server's answer to a connection set-up over the display's Unix socket: (1, "") accepted, (0, reason)
    refused. Raw protocol, so the test needs no X client library."""

    def padded(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(f"/tmp/.X11-unix/X{display.lstrip(':')}")
        s.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(data)) + padded(name) + padded(data))
        head = s.recv(8)
        status, reason_length = head[0], head[1]
        reason = b""
        while status == 0 and len(reason) < reason_length:
            chunk = s.recv(reason_length - len(reason))
            if not chunk:
                break
            reason += chunk
        return status, reason.decode(errors="replace")


def test_only_the_gateways_cookie_opens_its_display(tmp_path: Path, shm_dir: Path) -> None:
    xvfb = shutil.which("Xvfb")
    assert xvfb, "Xvfb is missing: install Debian's xvfb package (make test does)"
    display = next(f":{n}" for n in random.sample(range(200, 600), 400) if not Path(f"/tmp/.X{n}-lock").exists())
    env = launcher_env(tmp_path, shm_dir, DISPLAY=display, XVFB_COMMAND=f"{xvfb} {display} -nolisten tcp")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "run"], env=env, stderr=subprocess.PIPE)
    try:
        wait_for(file_written(tmp_path / "record.env", proc), what="the gateway to start after Xvfb")
        wait_for(Path(f"/tmp/.X11-unix/X{display[1:]}").exists, what="Xvfb's socket")
        gateway_env = dict(
            line.split("=", 1) for line in (tmp_path / "record.env").read_text().splitlines() if "=" in line
        )
        cookie_file = Path(gateway_env["XAUTHORITY"])
        assert oct(cookie_file.stat().st_mode & 0o777) == "0o600"
        entries = xauth.parse(cookie_file.read_bytes())
        assert [(e.number, e.name, len(e.data)) for e in entries] == [(display[1:], COOKIE, 16)]

        refused, reason = wait_for(lambda: x11_handshake(display), what="Xvfb to answer")
        assert refused == 0, "a client without the cookie was let onto the gateway's display"
        assert "authorization" in reason.lower() or "protocol" in reason.lower(), reason
        assert x11_handshake(display, COOKIE, b"\0" * 16)[0] == 0, "a guessed cookie opened the display"
        assert x11_handshake(display, COOKIE, entries[0].data) == (1, ""), "the gateway's own cookie was refused"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    consumer_env = (tmp_path / "consumer.json").read_text()
    assert "XAUTHORITY" not in consumer_env
    assert str(cookie_file) not in consumer_env
