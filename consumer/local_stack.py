"""What the installed CLI knows of a `make run` stack serving from this checkout: its work directory, its stack file
(the runner's pid and process groups) and its consumer's log, whose progress lines `publish --wait` echoes.

The stack itself (devstack/) is a developer tool outside the wheel; these few readers ship with the CLI, so that
`consumer publish --wait` behaves the same whether it runs from the virtualenv's script or from the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

STACK_FILE = "stack.json"


def workdir(environ: Mapping[str, str]) -> Path:
    """Logs and the stack file; DEVSTACK_DIR moves them (tests run a stack beside a developer's)."""
    return Path(environ.get("DEVSTACK_DIR") or ".devstack")


class ProgressEcho:
    """Brings a long rebalance's progress from the consumer's log file to this terminal, where the person looks."""

    def __init__(self, log_path: Path, out: TextIO | None = None) -> None:
        self._path = log_path
        self._offset = log_path.stat().st_size if log_path.exists() else 0
        self._partial = b""
        self._out = out
        # `consumer publish --wait` follows only its own request (its message id or idempotency key); make run, all.
        self.request_ids: set[str] | None = None

    def poll(self) -> None:
        try:
            with self._path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = re.sub(r"\x1b\[[0-9;]*m", "", raw.decode(errors="replace"))
            if "orders confirmed" not in line:
                continue
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            if self.request_ids is not None and fields.get("requestId") not in self.request_ids:
                continue
            with contextlib.suppress(OSError):
                print(
                    f"    ... {fields.get('intent', 'intent')} {fields.get('requestId', '')}: "
                    f"{fields.get('confirmed', '?')}/{fields.get('total', '?')} orders confirmed",
                    file=self._out or sys.stdout,
                    flush=True,
                )


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22); None if it is gone or there
    is no /proc. With the pid, it names one process for good: a pid is reused, a (pid, start) pair is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


class StackFile:
    """`stack.json`: the runner's pid and every process group it started, for `make stop`."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STACK_FILE

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, groups: dict[str, int], listeners: list[tuple[str, str, int]]) -> None:
        # Each leader's start time too: pids wrap (32,768 on many machines), and `make stop` must not end a group
        # that merely got a recorded number again.
        started = {name: start_ticks(pgid) for name, pgid in groups.items()}
        record = {"runner": os.getpid(), "groups": groups, "started": started, "listeners": listeners}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def live_runner(self) -> int | None:
        """The pid of a runner still alive (and still ours: its command line names the devstack)."""
        data = self.read()
        pid = data.get("runner") if data else None
        if not isinstance(pid, int) or pid == os.getpid():
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        except OSError:  # no /proc: trust the signal probe
            return pid
        return pid if b"devstack" in cmdline.split(b"\0") else None  # `python -m devstack run`
