"""`make bench`: our design against the floor and two baselines, on the local stack, in one run.

Emulators and the simulated gateway start on free ports; the consumer runs as its own process so its CPU and
memory are its own. Every latency row is measured twice: with the gateway answering instantly, and with its
latency model adding a few milliseconds per message, as a gateway over a network would. Results go to stdout as
a table and to bench/results.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.designs import DESIGNS, summary_calls
from bench.probe import Client, cpu_seconds, percentiles, rss_mb
from bench.stack import CONNECT_COST, BenchStack

N = int(os.environ.get("BENCH_N", "30"))
# Baseline (a) pays the whole start-up download on every intent (about 11 s at the seeded size): a few will do.
PER_CALL_N = int(os.environ.get("BENCH_PER_CALL_N", "3"))
FIRST_ORDER_N = int(os.environ.get("BENCH_FIRST_ORDER_N", "6"))
BURST = int(os.environ.get("BENCH_BURST", "100"))
SCALE = (50, 200, 1000)
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "30"))
LATENCIES_MS = (0.0, 3.0)
RESULTS = Path(__file__).resolve().parent / "results.json"

SUMMARY = {"intent": "summary"}
DRY_ALLOCATION = {
    "intent": "allocation",
    "dryRun": True,
    "params": {"strategies": ["dummy"], "strategyParams": {"dummy": {"weights": {"SPY": 0.2, "TLT": 0.1}}}},
}


def raw_ib_latencies(port: int, count: int) -> list[float]:
    """The same four requests straight on a connected ib_insync client: the broker floor."""
    from ib_insync import IB

    out: list[float] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ib = IB()
        loop.run_until_complete(ib.connectAsync("127.0.0.1", port, clientId=80, timeout=60))
        for i in range(count + 3):
            started = time.perf_counter()
            loop.run_until_complete(summary_calls(ib))
            if i >= 3:
                out.append(time.perf_counter() - started)
        ib.disconnect()
        loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out


def firestore_rtt_ms(project: str, count: int = 50) -> dict[str, float]:
    """One document read from the emulator, the same round trip the consumer's claim and reply writes pay."""
    from google.cloud import firestore

    db = firestore.Client(project=project)
    doc = db.collection("bench").document("rtt")
    doc.set({"at": time.time()})
    samples = []
    for _ in range(count + 5):
        started = time.perf_counter()
        doc.get()
        samples.append(time.perf_counter() - started)
    db.close()
    return percentiles(samples[5:])


def first_orders(stack: BenchStack, client: Client, count: int) -> dict[str, Any]:
    """Publish to the first order at the gateway for a 1-instrument allocation (buy, then sell back, in turn)."""
    gateway = stack.gateway
    samples: list[float] = []
    splits: list[dict[str, float]] = []
    for i in range(count):
        before = len(gateway.orders())
        seen: list[float] = []
        stop = threading.Event()

        def watch(before: int = before, seen: list[float] = seen, stop: threading.Event = stop) -> None:
            while not stop.is_set() and not seen:
                if len(gateway.orders()) > before:
                    seen.append(time.perf_counter())
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        weight = 0.01 if i % 2 == 0 else 0.0
        body = {"intent": "allocation", "params": {"strategies": ["dummy"],
                "strategyParams": {"dummy": {"weights": {"SPY": weight}}}}}  # fmt: skip
        published_wall = time.time()
        watcher.start()
        started = time.perf_counter()
        _, reply = client.round_trip(body, timeout=60)
        stop.set()
        watcher.join(5)
        if reply["status"] != "ok" or not seen:
            raise RuntimeError(f"1-instrument allocation placed no order: {reply}")
        first = (seen[0] - started) * 1000
        samples.append(first / 1000)
        timings = reply["result"]["timings"]
        received = datetime.fromisoformat(reply["startedAt"]).timestamp()
        pubsub = max(0.0, (received - published_wall) * 1000)
        # The reply times the claim, the config read and each phase to the order's hand-off; what is left of the
        # time to the order at the gateway is the dispatch itself (decoding, the trading lock) and the socket.
        phases = ("claim", "config", "books", "contracts", "prices", "signals", "orders")
        splits.append({"pubsub": pubsub, **{k: timings[k] for k in phases},
                       "rest": max(0.0, first - pubsub - sum(timings[k] for k in phases))})  # fmt: skip
    median = {k: round(statistics.median(s[k] for s in splits), 1) for k in splits[0]}
    return {**percentiles(samples), "medianSplitMs": median, "samples": count}


def rebalance(
    stack: BenchStack, client: Client, symbols: list[str], weights: dict[str, float] | None = None
) -> dict[str, Any]:
    """A real allocation across `symbols` (equal weights unless given); orders/s measured at the gateway from first
    to last order."""
    gateway = stack.gateway
    before = len(gateway.orders())
    violations = gateway.pacing_violations()
    first: list[float] = []
    last: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            count = len(gateway.orders()) - before
            now = time.perf_counter()
            if count and not first:
                first.append(now)
            if count >= len(symbols):
                last.append(now)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    weights = weights or dict.fromkeys(symbols, round(0.8 / len(symbols), 6))
    body = {"intent": "allocation", "params": {"strategies": ["dummy"],
            "strategyParams": {"dummy": {"weights": weights}}}}  # fmt: skip
    seconds, reply = client.round_trip(body, timeout=600)
    stop.set()
    watcher.join(5)
    if reply["status"] != "ok":
        raise RuntimeError(f"rebalance failed: {reply}")
    placed = len(gateway.orders()) - before
    span = (last[0] - first[0]) if first and last else float("nan")
    return {
        "instruments": len(symbols),
        "ordersPlaced": placed,
        "outcomes": reply["result"]["orders"],
        "totalSeconds": round(seconds, 2),
        # Receipt to reply built (the reply's durationMs, the consumer's own clock): no Pub/Sub delivery, and not the
        # storing and publishing of the reply, which the bench does not measure for a rebalance.
        "serviceSeconds": round(reply["durationMs"] / 1000, 2),
        "placementSeconds": round(span, 2),
        "ordersPerSecond": round((placed - 1) / span, 1) if span and span == span and span > 0 else None,
        "pacingLimitPerSecond": 50,
        "pacingErrors": gateway.pacing_violations() - violations,
        "secondsPerOrder": round(reply["durationMs"] / 1000 / placed, 4) if placed else None,
        "timingsMs": reply["result"].get("timings", {}),
        # Sized at IB's portfolio marks (held instruments, no snapshot each) rather than a snapshot.
        "pricedAtMarks": len(reply["result"].get("markedPrices", [])),
    }


def shifted_weights(symbols: list[str]) -> dict[str, float]:
    """The equal weights of `rebalance` moved half up and half down by half: a held book where every instrument
    trades (100 buys and 100 sells for 200), the same gross exposure."""
    weight = round(0.8 / len(symbols), 6)
    return {s: round(weight * (1.5 if i % 2 == 0 else 0.5), 6) for i, s in enumerate(symbols)}


def dry_allocation(symbols: list[str]) -> dict[str, Any]:
    weight = round(0.8 / len(symbols), 6)
    return {"intent": "allocation", "dryRun": True, "params": {"strategies": ["dummy"],
            "strategyParams": {"dummy": {"weights": dict.fromkeys(symbols, weight)}}}}  # fmt: skip


def warm_contracts(stack: BenchStack, ours: Client, symbols: list[str], results: dict[str, Any]) -> None:
    """What a deployment's first day pays once: contract details for instruments never seen, fetched from IB
    (a dry run over the 200 of the main rebalance, timed, then over the rest), kept in Firestore; then a new consumer
    process, so the rebalances below find them in Firestore, as every later day does, not in memory."""
    seconds, reply = ours.round_trip(dry_allocation(symbols[:200]), timeout=600)
    if reply["status"] != "ok":
        raise RuntimeError(f"dry run failed: {reply}")
    results["contractsNotCached200"] = {
        "totalSeconds": round(seconds, 2),
        "contractsMs": reply["result"].get("timings", {}).get("contracts"),
    }
    print(f"  200 instruments never seen (dry run): {results['contractsNotCached200']}", flush=True)
    if ours.round_trip(dry_allocation(symbols), timeout=600)[1]["status"] != "ok":
        raise RuntimeError("dry run over every instrument failed")
    stack.restart_consumer()


def scale(stack: BenchStack, ours: Client, results: dict[str, Any]) -> None:
    """The same rebalance at every size of SCALE, flattened in between; the books' settling after the largest."""
    generated = [f"SYM{n:03d}" for n in range(max(SCALE))]
    print("\ncontract details for every instrument, first day (then a new consumer process) ...", flush=True)
    warm_contracts(stack, ours, generated, results)
    for size in SCALE:
        print(f"\nrebalance of {size} instruments ...", flush=True)
        try:
            results[f"rebalance{size}"] = rebalance(stack, ours, generated[:size])
        except (RuntimeError, queue.Empty) as e:  # a MISS with its reason; the rest of the run still reported
            results[f"rebalance{size}"] = {"instruments": size, "error": str(e)[:500]}
            print(f"  failed: {e}")
            break
        print(f"  {results[f'rebalance{size}']}")
        if size == 200:
            print("\nrebalance of the 200 held instruments to shifted weights ...", flush=True)
            try:
                results["rebalance200Held"] = rebalance(
                    stack, ours, generated[:size], shifted_weights(generated[:size])
                )
            except (RuntimeError, queue.Empty) as e:
                results["rebalance200Held"] = {"instruments": size, "error": str(e)[:500]}
            print(f"  {results['rebalance200Held']}")
        if size == max(SCALE):
            print("waiting for the books to settle (every fill booked) ...", flush=True)
            results["booksSettledSeconds"] = stack.wait_books_settled()
            print(f"  settled {results['booksSettledSeconds']} s after the reply (after the last fill)")
            break  # no close-all after the last: every completed order makes the next look-up longer
        try:
            closed = ours.round_trip({"intent": "close-all", "params": {"strategies": ["dummy"]}}, timeout=600)
        except queue.Empty:  # the larger sizes are reported missing, with the reason, not the whole run lost
            results["scaleStopped"] = f"no reply to the close-all after the {size}-instrument rebalance within 600 s"
            print("  the close-all after it got no reply within 600 s")
            break
        if closed[1]["status"] != "ok":
            raise RuntimeError(f"close-all failed: {closed[1]}")


def main() -> int:
    results: dict[str, Any] = {"n": N, "latency": {}, "machine": os.uname().machine, "cpus": os.cpu_count()}
    with BenchStack(designs=[d.name for d in DESIGNS]) as stack:
        results["account"] = stack.seeded
        results["connectCost"] = CONNECT_COST
        # One subscriber per subscription for the whole run: the emulator keeps sending to a cancelled stream
        # for up to its ack deadline, so re-subscribing between rounds would stall the next round.
        ours = Client(stack.ours)
        designs = [(d, d(stack.project_of(d.name), stack.gateway.port)) for d in DESIGNS]
        clients = {d.name: Client(stack.project_of(d.name)) for d in DESIGNS}
        for _, instance in designs:
            instance.start()
        try:
            # The seeded positions are nobody's: booked to unallocated, so the books agree with the broker.
            fixed = ours.round_trip({"intent": "reconcile", "params": {"fix": True}}, timeout=120)[1]
            if fixed["status"] != "ok":
                raise RuntimeError(f"reconcile failed: {fixed}")
            results["firestoreRttMs"] = firestore_rtt_ms(stack.ours)
            print(f"\nFirestore round trip (emulator): {results['firestoreRttMs']}", flush=True)
            for latency_ms in LATENCIES_MS:
                stack.gateway.set_latency(fixed=latency_ms / 1000)
                rows: dict[str, Any] = {}
                print(f"\n[gateway latency {latency_ms:g} ms/message] measuring {N} requests per row ...", flush=True)
                raw = percentiles(raw_ib_latencies(stack.gateway.port, N))
                rows["raw ib_insync (broker floor)"] = {"endToEnd": raw, "service": raw}
                for design, _ in designs:
                    per_call = design.name.startswith("baseline (a)")
                    count, warmup = (PER_CALL_N, 0) if per_call else (N, 3)
                    rows[design.name] = clients[design.name].latencies(SUMMARY, count, warmup=warmup)
                rows["ours: summary"] = ours.latencies(SUMMARY, N, warmup=3)
                rows["ours: allocation (dry run)"] = ours.latencies(DRY_ALLOCATION, N, warmup=3)
                results["latency"][f"{latency_ms:g}ms"] = rows
                _print_rows(rows)
            stack.gateway.set_latency(fixed=0.0)

            print(f"\nthroughput: {BURST} summaries published at once ...", flush=True)
            results["summaryPerSecond"] = round(ours.burst(SUMMARY, BURST), 1)
            print(f"  {results['summaryPerSecond']} summaries/s")

            print(f"\ntime to first order, 1-instrument allocation, {FIRST_ORDER_N} times ...", flush=True)
            results["firstOrder"] = first_orders(stack, ours, FIRST_ORDER_N)
            print(f"  {results['firstOrder']}")

            scale(stack, ours, results)
        finally:
            ours.close()
            for _, instance in designs:
                instance.stop()
            for client in clients.values():
                client.close()

        stack.wait_books_settled()
        print(f"\nidle cost: {IDLE_SECONDS:g} s of a connected, subscribed consumer doing nothing ...", flush=True)
        pid = stack.consumer_pid
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        cpu = cpu_seconds(pid) - cpu_before
        results["idle"] = {
            "cpuPercentOfOneCore": round(100 * cpu / (time.monotonic() - started), 2),
            "rssMB": round(rss_mb(pid), 1),
        }
        print(f"  {results['idle']}")

    results["verdict"] = verdict(results)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + "\n".join(f"{'PASS' if ok else 'MISS'}  {text}" for text, ok in results["verdict"]))
    print(f"\nwritten to {RESULTS}")
    return 0


def verdict(r: dict[str, Any]) -> list[tuple[str, bool]]:
    out = []
    rtt = r["firestoreRttMs"]["p50_ms"]
    for key, rows in r["latency"].items():
        ours = rows["ours: summary"]
        floor_e2e = rows["floor (Pub/Sub echo)"]["endToEnd"]["p50_ms"]
        raw = rows["raw ib_insync (broker floor)"]["service"]["p50_ms"]
        floor = floor_e2e + raw
        e2e = ours["endToEnd"]["p50_ms"]
        out.append((f"[{key}] summary p50 end to end {e2e} ms vs floor {floor:.2f} ms (Pub/Sub echo + raw ib_insync): "
                    f"x{e2e / floor:.2f} (target <= 1.2)", e2e <= 1.2 * floor))  # fmt: skip
        # Judged to the reply published (its Pub/Sub publish time), as the target reads; durationMs stops when the
        # reply is built, before it is stored and published, and is shown beside it.
        built, bound = ours["service"]["p50_ms"], raw + rtt + 2
        service = ours.get("servicePublished", ours["service"])["p50_ms"]
        out.append((f"[{key}] summary p50 service time, receipt to reply published {service} ms (to reply built "
                    f"{built} ms) vs raw ib_insync {raw} ms + one Firestore round trip {rtt} ms + 2 ms = {bound:.2f} "
                    "ms (target <=)", service <= bound))  # fmt: skip
        for name in ("baseline (a): connection per intent", "baseline (b): queue + polling"):
            other = rows[name]
            # Only (a) has a target (issue 17); (b), one connection held by a polled worker thread, does what ours
            # does at the broker and is reported beside it: the two are within noise of each other.
            per_call = "(a)" in name
            out.append((
                f"[{key}] {name}: end to end x{other['endToEnd']['p50_ms'] / e2e:.2f}, service time "
                f"x{other['service']['p50_ms'] / ours['service']['p50_ms']:.2f} of ours"
                + (" (target >= 10)" if per_call else " (reported, no target)"),
                other["service"]["p50_ms"] >= 10 * ours["service"]["p50_ms"] if per_call else True,
            ))  # fmt: skip
    first = r["firstOrder"]
    out.append((f"time to first order, 1 instrument: p50 {first['p50_ms']} ms, p99 {first['p99_ms']} ms, median split "
                f"{first['medianSplitMs']} (reported, no target)", True))  # fmt: skip
    failed = [n for n in SCALE if "error" in r.get(f"rebalance{n}", {"error": "not run"})]
    if failed:
        out.append((f"rebalances that failed or did not run: {failed} (see results.json)", False))
    if 200 in failed:
        return out
    cold = r.get("contractsNotCached200")
    if cold:
        out.append((f"200 instruments never seen before (first day, dry run): {cold['totalSeconds']} s, of which "
                    f"contract details {cold['contractsMs']} ms; kept in Firestore (reported)", True))  # fmt: skip
    reb = r["rebalance200"]
    out.append((f"200-instrument rebalance into new instruments, receipt to reply: {reb['serviceSeconds']} s (publish "
                f"to reply received {reb['totalSeconds']} s; target <= 6.0 s; 200 snapshots + 200 orders are 8.0 s at "
                f"50 messages/s); split ms {reb['timingsMs']}", reb["serviceSeconds"] <= 6.0))  # fmt: skip
    held = r.get("rebalance200Held", {"error": "not run"})
    if "error" in held:
        out.append((f"200-instrument rebalance of a held book failed or did not run: {held['error']}", False))
    else:
        out.append((f"200-instrument rebalance of a held book (every instrument trades), receipt to reply: "
                    f"{held['serviceSeconds']} s, {held['pricedAtMarks']} priced at IB's marks (publish to reply "
                    f"received {held['totalSeconds']} s; target <= 6.0 s); split ms {held['timingsMs']}",
                    held["serviceSeconds"] <= 6.0))  # fmt: skip
    # Placement is judged where the orders have ib_insync's throttle to themselves: into new instruments they share
    # it with the last snapshots, and how those overlap the first orders moves the rate (reported beside it).
    rate = held.get("ordersPerSecond") or 0
    out.append((f"200-order placement, held book: {rate} orders/s, {100 * rate / 50:.0f}% of the 50/s limit (target "
                f">= 90%); into new instruments {reb['ordersPerSecond']} orders/s, sharing the throttle with the "
                "snapshots", rate >= 45))  # fmt: skip
    done = [n for n in SCALE if n not in failed]
    errors = sum(r[f"rebalance{n}"]["pacingErrors"] for n in done) + held.get("pacingErrors", 0)
    out.append((f"pacing errors during rebalances: {errors} (target 0)", errors == 0))
    if 1000 in done:
        per_order = {n: r[f"rebalance{n}"]["secondsPerOrder"] for n in SCALE}
        linear = per_order[1000] <= 1.25 * per_order[200]
        out.append((f"seconds per order at 50/200/1000 instruments: {per_order[50]}/{per_order[200]}/"
                    f"{per_order[1000]} (target: linear, 1000 within 1.25x of 200)", linear))  # fmt: skip
        settled = r["booksSettledSeconds"]
        out.append((f"books settled {settled} s after the last fill of the 1000-instrument rebalance (target <= 5 s)",
                    settled <= 5))  # fmt: skip
    out.append((f"idle CPU {r['idle']['cpuPercentOfOneCore']}% of a core (target < 1%)",
                r["idle"]["cpuPercentOfOneCore"] < 1))  # fmt: skip
    out.append((f"RSS {r['idle']['rssMB']} MB (target < 150 MB)", r["idle"]["rssMB"] < 150))
    return out


def _print_rows(rows: dict[str, Any]) -> None:
    print(f"  {'':<38} {'end to end':>21} {'service time':>21}")
    print(f"  {'design':<38} {'p50 ms':>10} {'p99 ms':>10} {'p50 ms':>10} {'p99 ms':>10}")
    for name, row in rows.items():
        e, s = row["endToEnd"], row["service"]
        print(f"  {name:<38} {e['p50_ms']:>10.2f} {e['p99_ms']:>10.2f} {s['p50_ms']:>10.2f} {s['p99_ms']:>10.2f}")
        if "servicePublished" in row:
            p = row["servicePublished"]
            print(f"  {'  ... to the reply published':<38} {'':>10} {'':>10} {p['p50_ms']:>10.2f} {p['p99_ms']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
