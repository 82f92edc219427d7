"""The local stack the benchmark runs against: emulators and gateway on free ports, the consumer as a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from google.cloud import firestore

from consumer.devstack.emulators import EmulatorPair, free_port, http_ok, require_tools
from consumer.devstack.provision import provision
from consumer.store.layout import config_path, mode_path

OURS = "bench-ours"

BENCH_ACCOUNT = "DU123456"  # the default ibsim scenario's account


class BenchStack(contextlib.AbstractContextManager["BenchStack"]):
    def __init__(self, designs: list[str]) -> None:
        self.ours = OURS
        self._projects = {name: f"bench-{i}" for i, name in enumerate(designs)}
        self._stack = contextlib.ExitStack()
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.gateway: Any = None
        self._consumer: subprocess.Popen[bytes] | None = None

    def project_of(self, design: str) -> str:
        return self._projects[design]

    @property
    def consumer_pid(self) -> int:
        assert self._consumer is not None
        return self._consumer.pid

    def __enter__(self) -> BenchStack:
        from ibsim import Scenario, ThreadedGateway

        require_tools()
        print("starting emulators and the simulated gateway ...", flush=True)
        emulators = self._stack.enter_context(EmulatorPair(workdir=self._tmp))
        os.environ.update(emulators.environ())
        scenario = Scenario.from_dict({"generated": {"count": 220}})
        self.gateway = self._stack.enter_context(ThreadedGateway(port=0, scenario=scenario))
        for project in (self.ours, *self._projects.values()):
            provision(project)
        db = firestore.Client(project=self.ours)
        db.document(config_path(BENCH_ACCOUNT, "paper")).set(
            {"tradingEnabled": True, "leverageCap": 1.0,
             "exposure": {"overall": 1.0, "strategies": {"dummy": 1.0}}}
        )  # fmt: skip
        db.close()
        health = free_port()
        log = (self._tmp / "consumer.log").open("ab")
        self._consumer = subprocess.Popen(
            [sys.executable, "-m", "consumer", "serve"],
            env={**os.environ, "GOOGLE_CLOUD_PROJECT": self.ours, "IB_PORT": str(self.gateway.port),
                 "IB_ACCOUNT": BENCH_ACCOUNT, "HEALTH_PORT": str(health), "LOG_FORMAT": "json", "LOG_LEVEL": "WARNING"},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._stack.callback(self._stop_consumer)
        deadline = time.monotonic() + 60
        while not http_ok(f"http://127.0.0.1:{health}/readyz"):
            if self._consumer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the consumer did not get ready; see {self._tmp / 'consumer.log'}")
            time.sleep(0.1)
        print(f"consumer ready (pid {self._consumer.pid}); logs in {self._tmp}", flush=True)
        return self

    def wait_books_settled(self, timeout: float = 300.0) -> float:
        """Seconds until no order is left open in Firestore: live booking has caught up with every fill."""
        started = time.monotonic()
        db = firestore.Client(project=self.ours)
        try:
            open_orders = db.document(mode_path(BENCH_ACCOUNT, "paper")).collection("openOrders")
            while any(True for _ in open_orders.limit(1).stream()):
                if time.monotonic() - started > timeout:
                    raise RuntimeError("the books did not settle")
                time.sleep(0.2)
        finally:
            db.close()
        return round(time.monotonic() - started, 1)

    def _stop_consumer(self) -> None:
        if self._consumer is not None and self._consumer.poll() is None:
            self._consumer.terminate()
            self._consumer.wait(60)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
