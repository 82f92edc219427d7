"""Google's Pub/Sub and Firestore emulators as child processes.

Used by `make run` (on fixed, documented ports) and by the test fixtures (on free ports). The `gcloud` wrapper
forks a Java process, so each emulator runs in its own process group and is stopped as a group: killing only the
wrapper would leave Java listening.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from consumer.addresses import port_open, split_host_port

GCLOUD_HINT = (
    "gcloud not found: install the Google Cloud CLI with its emulators "
    "(Debian/Ubuntu packages google-cloud-cli, google-cloud-cli-pubsub-emulator, "
    "google-cloud-cli-firestore-emulator; see https://cloud.google.com/sdk/docs/install)"
)
# `lean` emulators, for the test suite, whose short tests share two cores with seven workers: the serial collector
# (no GC threads) for both, and for Firestore the quick compiler only (C2's compile threads cost more CPU than they
# return over a test's few requests). Measured on the 2,000-message burst test: Pub/Sub 16.4 -> 12.3 s of CPU,
# Firestore 12.8 -> 7.0 s; Pub/Sub keeps C2 (with C1 alone it took 36 s). `make run` and the bench keep the JVM's
# defaults: under a 1,000-order rebalance the lean Firestore slowed the bench's placement from 50 to 44 orders/s.
PUBSUB_JVM_OPTIONS = "-XX:+UseSerialGC"
FIRESTORE_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
JAVA_HINT = "java not found: the emulators need a Java 11+ runtime (Debian/Ubuntu package openjdk-17-jre-headless)"


class ToolMissing(RuntimeError):
    """A program the local stack needs is not installed; the message says what to install."""


def require_tools() -> None:
    if shutil.which("gcloud") is None:
        raise ToolMissing(GCLOUD_HINT)
    if shutil.which("java") is None:
        raise ToolMissing(JAVA_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Emulator:
    """One emulator process group; `address` is what goes into *_EMULATOR_HOST."""

    name: str
    address: str
    args: list[str]
    log_path: Path
    jvm_options: str = ""  # JAVA_TOOL_OPTIONS of its JVM (gcloud starts Java itself)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout: float = 60.0) -> None:
        require_tools()
        host, port = split_host_port(self.address)
        if port_open(host, port):
            raise RuntimeError(f"{self.name} emulator: {self.address} is already in use")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "JAVA_TOOL_OPTIONS": self.jvm_options} if self.jvm_options else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-800:]
                raise RuntimeError(f"{self.name} emulator exited at start-up:\n{tail}")
            if http_ok(f"http://{self.address}/"):
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} emulator did not answer on {self.address} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            # The wrapper can exit before its Java child: the group is killed either way.
            stop_process_group(proc, timeout, reap_group=True)


def pubsub_emulator(address: str, workdir: Path, project: str, lean: bool = False) -> Emulator:
    data_dir = workdir / "pubsub-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return Emulator(
        name="Pub/Sub",
        address=address,
        args=[
            "gcloud", "beta", "emulators", "pubsub", "start",
            f"--host-port={address}", f"--project={project}", f"--data-dir={data_dir}",
            "--quiet", "--verbosity=error",
        ],
        log_path=workdir / "pubsub-emulator.log",
        jvm_options=PUBSUB_JVM_OPTIONS if lean else "",
    )  # fmt: skip


def firestore_emulator(address: str, workdir: Path, lean: bool = False) -> Emulator:
    return Emulator(
        name="Firestore",
        address=address,
        args=["gcloud", "emulators", "firestore", "start", f"--host-port={address}", "--quiet"],
        log_path=workdir / "firestore-emulator.log",
        jvm_options=FIRESTORE_JVM_OPTIONS if lean else "",
    )


class EmulatorPair(contextlib.AbstractContextManager["EmulatorPair"]):
    """Both emulators, started concurrently (each takes ~3 s, mostly JVM start-up); `lean` for the test suite."""

    def __init__(
        self,
        pubsub_address: str | None = None,
        firestore_address: str | None = None,
        project: str = "local-project",
        workdir: Path | None = None,
        lean: bool = False,
    ) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="emulators-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pubsub = pubsub_emulator(pubsub_address or f"127.0.0.1:{free_port()}", self.workdir, project, lean)
        self.firestore = firestore_emulator(firestore_address or f"127.0.0.1:{free_port()}", self.workdir, lean)

    def __enter__(self) -> EmulatorPair:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(e.start) for e in (self.pubsub, self.firestore)]
            errors = [f.exception() for f in futures]
        if any(errors):
            self.__exit__(None, None, None)
            raise next(e for e in errors if e)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pubsub.stop()
        self.firestore.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def environ(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.pubsub.address, "FIRESTORE_EMULATOR_HOST": self.firestore.address}


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float, reap_group: bool = False) -> None:
    """SIGTERM to the child's process group (it was started with start_new_session), SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    if reap_group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def http_ok(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
