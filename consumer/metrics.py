"""Counters and latencies that matter to whoever runs this, served on /metrics in the Prometheus text format
(what collectors scrape) and as JSON on /metrics.json.

In Google Cloud the same facts reach Cloud Monitoring as log-based metrics: every counted event is also a
structured log line with a stable message ("intent finished", "order settled", "gateway connected",
"dead-lettered"), which infra/ turns into metrics. Thread-safe: the broker loop writes, the health thread reads.

Labels come from a fixed vocabulary: an intent name is a label only if it is a registered intent, anything else is
counted as `unknown`. A message names its own intent, so without that any publisher could mint labels (and grow
/metrics without bound) with names like `../../etc/passwd`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

# Latency buckets (ms) for intents, enough to see p50/p99 shifts without a metrics library.
BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
UNKNOWN = "unknown"
NO_INTENT = "(none)"


class Metrics:
    """The process's counters and per-intent latency histograms, thread-safe (callback threads and the loop count).

    `count(name, label)` bumps a counter, `observe_intent` records a settled intent's status and duration under its
    label (`intent_label`: unknown intents share one, so a hostile sender cannot grow the series); `snapshot()` is
    the JSON of /metrics.json, which `prometheus_text` renders for /metrics.
    """

    def __init__(self, intents: Iterable[str] = ()) -> None:
        self._intents = frozenset(intents)
        self._lock = threading.Lock()
        self._counters: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)

    def count(self, name: str, label: str = "", by: int = 1) -> None:
        with self._lock:
            self._counters[name][label] += by

    def intent_label(self, intent: str | None) -> str:
        """The label for a message's intent: a registered name, "(none)" when it named none, else "unknown"."""
        if not intent:
            return NO_INTENT
        return intent if intent in self._intents else UNKNOWN

    def observe_intent(self, intent: str | None, status: str, duration_ms: float) -> None:
        intent = self.intent_label(intent)
        with self._lock:
            self._counters["intents"][f"{intent}:{status}"] += 1
            buckets = self._latency.setdefault(intent, [0] * (len(BUCKETS_MS) + 1))
            index = next((i for i, bound in enumerate(BUCKETS_MS) if duration_ms <= bound), len(BUCKETS_MS))
            buckets[index] += 1
            self._latency_sum[intent] += duration_ms

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latency = {
                intent: {
                    "count": sum(buckets),
                    "meanMs": round(self._latency_sum[intent] / max(1, sum(buckets)), 3),
                    "bucketsMs": {
                        (f"le{bound}" if i < len(BUCKETS_MS) else "inf"): n
                        for i, (bound, n) in enumerate(zip((*BUCKETS_MS, None), buckets, strict=True))
                        if n
                    },
                }
                for intent, buckets in self._latency.items()
            }
            for intent, entry in latency.items():
                entry["sumMs"] = round(self._latency_sum[intent], 3)
            return {
                "counters": {name: dict(values) for name, values in self._counters.items()},
                "intentLatency": latency,
            }


# The label names of each counter's label ("intent:status" for intents); a counter not listed has none.
LABELS: dict[str, tuple[str, ...]] = {
    "intents": ("intent", "status"),
    "orders": ("outcome",),
    "deadLettered": ("intent",),
    "recovered": ("intent",),
}
PREFIX = "ib_consumer"


def prometheus_text(snapshot: dict[str, Any]) -> tuple[bytes, str]:
    """The snapshot in the Prometheus text exposition format, and its content type.

    Rendered from the same snapshot as the JSON, through a registry made for the call: no global registry.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector

    class Snapshot(Collector):
        """Renders one metrics snapshot for prometheus_client: counters as families, intent latency as a histogram."""

        def collect(self) -> Iterable[Metric]:
            for name, values in sorted(snapshot.get("counters", {}).items()):
                labels = LABELS.get(name, ("label",) if any(values) else ())
                family = CounterMetricFamily(
                    f"{PREFIX}_{_snake(name)}", f"{name} (consumer/metrics.py)", labels=list(labels)
                )
                for label, value in sorted(values.items()):
                    parts = label.split(":", len(labels) - 1) if labels else []
                    family.add_metric(parts + [""] * (len(labels) - len(parts)), value)
                yield family
            histogram = HistogramMetricFamily(
                f"{PREFIX}_intent_duration_seconds", "Time from claim to settled reply, per intent", labels=["intent"]
            )
            for intent, entry in sorted(snapshot.get("intentLatency", {}).items()):
                counts = entry.get("bucketsMs", {})
                cumulative, buckets = 0, []
                for bound in BUCKETS_MS:
                    cumulative += counts.get(f"le{bound}", 0)
                    buckets.append((f"{bound / 1000:g}", cumulative))
                buckets.append(("+Inf", entry["count"]))
                histogram.add_metric([intent], buckets, sum_value=entry.get("sumMs", 0.0) / 1000)
            yield histogram

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
