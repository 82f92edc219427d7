"""Measuring from the outside: publish-to-reply latency, throughput, and a process's CPU and memory."""

from __future__ import annotations

import json
import os
import queue
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1  # the form mypy resolves (the package has no py.typed)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Client:
    """Publishes to one project's intents topic and collects its replies (own subscription on the reply topic)."""

    def __init__(self, project: str) -> None:
        self.publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.001)
        )
        self.subscriber = pubsub_v1.SubscriberClient()
        self.topic = self.publisher.topic_path(project, "intents")
        self._replies: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        path = self.subscriber.subscription_path(project, "intent-replies-monitor")

        def on_reply(message: Any) -> None:
            reply = json.loads(message.data)
            # When Pub/Sub accepted the reply (the emulator stamps it from this machine's clock): the end of a
            # request's service time, which the reply's own durationMs (measured before it is stored and published)
            # cannot include.
            reply["_publishedAt"] = message.publish_time.timestamp()
            self._replies.put((time.perf_counter(), reply))
            message.ack()

        self._stream = self.subscriber.subscribe(
            path, on_reply, flow_control=pubsub_v1.types.FlowControl(max_duration_per_lease_extension=10)
        )

    def close(self) -> None:
        self._stream.cancel()
        self.subscriber.close()
        self.publisher.stop()

    def round_trip(self, body: dict[str, Any], timeout: float = 60.0) -> tuple[float, dict[str, Any]]:
        """Seconds from publish to the reply to this message."""
        started = time.perf_counter()
        message_id = self.publisher.publish(self.topic, json.dumps(body).encode()).result(timeout)
        deadline = started + timeout
        while True:
            received, reply = self._replies.get(timeout=max(0.01, deadline - time.perf_counter()))
            if reply.get("messageId") == message_id:
                return received - started, reply

    def latencies(self, body: dict[str, Any], count: int, warmup: int = 10) -> dict[str, Any]:
        """End to end (publish to reply received) and service time (the consumer's own durationMs: receipt to reply
        built). Where the reply says when it started (ours), also receipt to reply published (`servicePublished`)."""
        for _ in range(warmup):
            self.round_trip(body)
        end_to_end, service, published = [], [], []
        for _ in range(count):
            seconds, reply = self.round_trip(body)
            if reply.get("status") != "ok":
                raise RuntimeError(f"benchmark request failed: {reply}")
            end_to_end.append(seconds)
            service.append(reply["durationMs"] / 1000)
            if reply.get("startedAt"):
                published.append(reply["_publishedAt"] - datetime.fromisoformat(reply["startedAt"]).timestamp())
        rows = {"endToEnd": percentiles(end_to_end), "service": percentiles(service)}
        return rows | ({"servicePublished": percentiles(published)} if published else {})

    def burst(self, body: dict[str, Any], count: int, timeout: float = 300.0) -> float:
        """Requests per second answered when `count` are published at once."""
        started = time.perf_counter()
        futures = [self.publisher.publish(self.topic, json.dumps(body).encode()) for _ in range(count)]
        ids = {f.result(60) for f in futures}
        last = started
        while ids:
            received, reply = self._replies.get(timeout=timeout)
            if reply.get("messageId") in ids:
                ids.discard(reply["messageId"])
                last = received
        return count / (last - started)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2), "n": len(ordered)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
