"""A small process supervisor: start children in order, restart the one that dies with backoff, give up (and exit
non-zero, so the VM's systemd unit restarts the whole container) only when a child keeps dying or the watchdog
stays unhealthy. On SIGTERM it stops the children in reverse order (the consumer drains first, while the gateway is
still up) and exits 0.

The gateway's nightly restart does not involve this supervisor: IBC's ibcstart.sh relaunches the gateway itself and
stays alive, and the consumer reconnects on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from launcher import EXIT_CHILD_FAILED, EXIT_CONFIG, EXIT_OK, EXIT_UNHEALTHY
from launcher.logs import log
from launcher.users import RunAs


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    max_restarts: int = 5  # restarts allowed within `window` seconds before giving up
    window: float = 3600.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    stop_timeout: float = 30.0
    settle: float = 0.0  # seconds to let it come up before starting the next child (Xvfb before the gateway)
    exit_codes_fatal: Mapping[int, int] = field(default_factory=dict)  # child exit code -> our exit code, no restart
    user: RunAs | None = None  # None: the launcher's own user


@dataclass(frozen=True)
class Watchdog:
    """Calls `probe` every `interval`; unhealthy for `soft_after` -> `soft_action` once; for `exit_after` -> give up."""

    probe: Callable[[], bool]
    interval: float = 30.0
    soft_after: float = 900.0
    exit_after: float = 1800.0
    soft_action: Callable[[], None] | None = None


class _Child:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts: deque[float] = deque()
        self.start_at: float | None = 0.0  # when to (re)start it; None while running

    def start(self, now: float) -> None:
        user = self.spec.user
        self.proc = subprocess.Popen(
            list(self.spec.argv),
            env=dict(self.spec.env) if self.spec.env is not None else None,
            start_new_session=True,  # its own process group: a stop reaches ibcstart.sh's java too
            # Real, effective and saved ids all switched, supplementary groups dropped: no way back to root.
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
            cwd=user.home if user and user.home else None,
        )
        self.start_at = None
        log("started", child=self.spec.name, pid=self.proc.pid)

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        watchdog: Watchdog | None = None,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._children = [_Child(s) for s in specs]
        self._watchdog = watchdog
        self._poll = poll_interval
        self._clock = clock
        self._stop_requested = False
        self._unhealthy_since: float | None = None
        self._soft_done = False
        self._next_probe = 0.0

    def request_stop(self, *_: object) -> None:
        """Safe to call from a signal handler: it only sets a flag the loop reads."""
        self._stop_requested = True

    def pids(self) -> dict[str, int | None]:
        return {c.spec.name: (c.proc.pid if c.proc and c.proc.poll() is None else None) for c in self._children}

    def run(self) -> int:
        try:
            code = self._loop()
        finally:
            self._stop_all()
        log("supervisor exiting", exit_code=code, severity="INFO" if code == EXIT_OK else "ERROR")
        return code

    def _loop(self) -> int:
        start = self._clock()
        self._next_probe = start + (self._watchdog.interval if self._watchdog else 0)
        for child in self._children:  # first start, in order
            if self._stop_requested:
                return EXIT_OK
            child.start(self._clock())
            if child.spec.settle:
                self._sleep(child.spec.settle)
        while not self._stop_requested:
            now = self._clock()
            for child in self._children:
                code = self._tend(child, now)
                if code is not None:
                    return code
            code = self._watch(now)
            if code is not None:
                return code
            self._sleep(self._poll)
        return EXIT_OK

    def _tend(self, child: _Child, now: float) -> int | None:
        if child.start_at is not None:
            if now >= child.start_at and not self._stop_requested:
                child.start(now)
            return None
        assert child.proc is not None
        rc = child.proc.poll()
        if rc is None:
            return None
        spec = child.spec
        if rc in spec.exit_codes_fatal:
            log("child exited with a code that a restart cannot fix", severity="ERROR", child=spec.name, rc=rc)
            return spec.exit_codes_fatal[rc]
        while child.restarts and now - child.restarts[0] > spec.window:
            child.restarts.popleft()
        if len(child.restarts) >= spec.max_restarts:
            log(
                "child keeps dying: giving up",
                severity="ERROR",
                child=spec.name,
                rc=rc,
                restarts=len(child.restarts),
                window_seconds=spec.window,
            )
            return EXIT_CHILD_FAILED
        child.restarts.append(now)
        delay = min(spec.backoff_max, spec.backoff_initial * 2 ** (len(child.restarts) - 1))
        child.start_at = now + delay
        log("child exited: restarting", severity="WARNING", child=spec.name, rc=rc, in_seconds=delay)
        return None

    def _watch(self, now: float) -> int | None:
        wd = self._watchdog
        if wd is None or now < self._next_probe:
            return None
        self._next_probe = now + wd.interval
        try:
            healthy = wd.probe()
        except Exception as e:  # a broken probe is an unhealthy probe, not a dead supervisor
            log("watchdog probe failed", severity="WARNING", error=f"{type(e).__name__}: {e}")
            healthy = False
        if healthy:
            if self._unhealthy_since is not None:
                log("healthy again", unhealthy_seconds=round(now - self._unhealthy_since, 1))
            self._unhealthy_since, self._soft_done = None, False
            return None
        if self._unhealthy_since is None:
            self._unhealthy_since = now
        down = now - self._unhealthy_since
        if down >= wd.exit_after:
            log("unhealthy past the grace: giving up", severity="ERROR", unhealthy_seconds=round(down, 1))
            return EXIT_UNHEALTHY
        if down >= wd.soft_after and not self._soft_done and wd.soft_action is not None:
            self._soft_done = True
            log("unhealthy: trying a soft restart", severity="WARNING", unhealthy_seconds=round(down, 1))
            try:
                wd.soft_action()
            except Exception as e:
                log("soft restart failed", severity="WARNING", error=f"{type(e).__name__}: {e}")
        return None

    def _stop_all(self) -> None:
        for child in reversed(self._children):
            proc = child.proc
            if proc is None or proc.poll() is not None:
                continue
            log("stopping", child=child.spec.name, pid=proc.pid)
            child.signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=child.spec.stop_timeout)
            except subprocess.TimeoutExpired:
                log("did not stop in time: killing", severity="WARNING", child=child.spec.name)
                child.signal_group(signal.SIGKILL)
                proc.wait()
            child.signal_group(signal.SIGKILL)  # leftovers of its process group (ibcstart.sh's java, Xvfb helpers)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


__all__ = ["EXIT_CONFIG", "ChildSpec", "Supervisor", "Watchdog"]
