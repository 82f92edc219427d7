"""The scheduled jobs on NYSE's half days (the day after Thanksgiving, Christmas Eve: the regular session ends at
13:00 New York). The risk-check that may reduce fired at 13:00 to the second, and the only flatAtClose close-all at
15:55: on a half day neither could trade (found by an independent review of the calendar; both tests failed before
the schedule moved and gained its half-day twin). Each test fires the jobs as Cloud Scheduler would that day (every
firing time infra/schedules.yaml declares for them, with the job's own message and attributes) on the simulated
gateway, whose exchange calendar holds the half day, and checks the broker by orderRef and Firestore by execId.
A review of that fix found two more, also failing before theirs: the 15:55 job given `closingWithin` never closed a
future (CME closes at 17:00), and the 12:55 job was refused on full days when a book also held a closed market."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from consumer.data import SCHEDULES_DECLARATION
from tests.support import Bus, allocation, clock_seen, holdings, mode_collection, wait_for, write_config

pytestmark = pytest.mark.usefixtures("paper_config", "consumer")

# NYSE half days (regular session 09:30-13:00 New York), a Friday and a Thursday.
HALF_DAYS = ["2026-11-27", "2026-12-24"]


@pytest.fixture
def consumer(consumer_factory):
    return consumer_factory(order_timeout=3.0)


@pytest.fixture
def gateway_scenario() -> dict[str, Any]:
    return {"hours": "regular"}  # exchange sessions with their holidays and early closes


def _cron_field(text: str, low: int, high: int) -> set[int]:
    """The values of one cron field in the forms a schedule may use: *, numbers, ranges, lists, steps."""
    values: set[int] = set()
    for part in text.split(","):
        spec, _, step = part.partition("/")
        if spec == "*":
            first, last = low, high
        elif "-" in spec:
            first, last = (int(x) for x in spec.split("-"))
        else:
            first = last = int(spec)
        values.update(range(first, last + 1, int(step or 1)))
    return values


def scheduled_firings(wanted: Any, day: date) -> list[tuple[datetime, dict[str, Any]]]:
    """(instant, job) for every firing on `day` of the declared jobs `wanted(job)` selects, oldest first: what Cloud
    Scheduler publishes that day (paused jobs included: a person unpauses them once a strategy needs them)."""
    declaration = yaml.safe_load(SCHEDULES_DECLARATION.read_text())
    zone = ZoneInfo(declaration["timeZone"])
    out = []
    for job in declaration["jobs"]:
        if not wanted(job):
            continue
        minute, hour, dom, month, dow = job["schedule"].split()
        weekdays = {d % 7 for d in _cron_field(dow, 0, 7)}  # cron: 0 and 7 are Sunday
        if (
            (day.isoweekday() % 7) not in weekdays
            or day.day not in _cron_field(dom, 1, 31)
            or day.month not in _cron_field(month, 1, 12)
        ):
            continue
        for h in sorted(_cron_field(hour, 0, 23)):
            for m in sorted(_cron_field(minute, 0, 59)):
                out.append((datetime.combine(day, time(h, m), zone), job))
    return sorted(out, key=lambda firing: firing[0])


def fire(bus: Bus, gateway: Any, when: datetime, job: dict[str, Any]) -> dict[str, Any]:
    """The job's message, as its Cloud Scheduler job publishes it (intent and schedule attributes), a few seconds
    after its firing time by the gateway's clock."""
    gateway.set_time(when + timedelta(seconds=3))
    clock_seen(bus, gateway)
    body: dict[str, Any] = {"intent": job["intent"], "params": job.get("params", {})}
    if job.get("dryRun"):
        body["dryRun"] = True
    if "maxAgeSeconds" in job:
        body["maxAgeSeconds"] = job["maxAgeSeconds"]
    return bus.reply_to(bus.publish(body, intent=job["intent"], schedule=job["name"]), timeout=120.0)


def fire_flat_at_close_jobs(
    bus: Bus, gateway: Any, day: date
) -> tuple[list[tuple[datetime, dict[str, Any]]], list[dict[str, Any]], set[str]]:
    """Fires every flatAtClose close-all job of the day in turn: (firings, replies, the orderRefs they placed)."""
    firings = scheduled_firings(
        lambda job: job["intent"] == "close-all" and job.get("params", {}).get("flatAtClose") is True, day
    )
    assert firings, "no scheduled flatAtClose close-all fires on a weekday"
    replies = [fire(bus, gateway, when, job) for when, job in firings]
    refs = {
        line["orderRef"]
        for reply in replies
        if reply["status"] == "ok"
        for line in reply["result"]["instruments"]
        if line.get("orderRef")
    }
    return firings, replies, refs


def buy_spy(bus: Bus, project: str) -> float:
    reply = bus.reply_to(bus.publish(allocation({"SPY": 0.05})))
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert line["outcome"] == "filled", line
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": line["target"]}}, what="the buy booked to dummy")
    return float(line["target"])


def sales(gateway: Any, refs: set[str]) -> list[dict[str, Any]]:
    return [e for e in gateway.executions() if e["orderRef"] in refs and e["side"] == "SLD"]


@pytest.mark.parametrize("market_clock", [f"{d}T10:00:00-05:00" for d in HALF_DAYS], ids=HALF_DAYS, indirect=True)
def test_the_scheduled_flat_at_close_close_all_flattens_the_strategy_on_a_half_day(bus: Bus, gateway, project: str):
    """dummy is marked `flatAtClose: close`: the eod-close-all job is there to leave it flat at the close. It fires
    at 15:55 New York only, which on a half day is three hours after NYSE's 13:00 close: close-all is rejected
    market_closed and dummy carries its SPY over the holiday weekend; the day's eod-check reports it notFlat."""
    write_config(project, strategies={"dummy": {"flatAtClose": "close"}})
    bought = buy_spy(bus, project)
    day = gateway.now().astimezone(ZoneInfo("America/New_York")).date()
    firings, replies, refs = fire_flat_at_close_jobs(bus, gateway, day)
    sold = sales(gateway, refs)
    answered = [
        (f"{w:%H:%M}", r["status"], (r.get("error") or {}).get("code"))
        for (w, _), r in zip(firings, replies, strict=True)
    ]
    assert sum(e["shares"] for e in sold) == bought, (
        f"on the half day {day} the flatAtClose close-all fired at {answered} New York (NYSE closed at 13:00): "
        f"sold {sold}, the broker still holds {gateway.positions().get('SPY')} SPY"
    )
    wait_for(lambda: {e["execId"] for e in sold} <= {f["execId"] for f in mode_collection(project, "fills")},
             what="the sale booked by execId")  # fmt: skip
    wait_for(lambda: "dummy" not in holdings(project), what="dummy flat in the books")

    (eod_when, eod_job), *_ = scheduled_firings(lambda job: job["intent"] == "eod-check", day)
    report = fire(bus, gateway, eod_when, eod_job)
    assert report["status"] == "ok", report
    assert report["result"]["notFlat"] == {}, report["result"]


@pytest.mark.parametrize("market_clock", [f"{d}T10:00:00-05:00" for d in HALF_DAYS], ids=HALF_DAYS, indirect=True)
def test_the_scheduled_risk_checks_reduce_can_act_on_a_half_day(bus: Bus, gateway, project: str):
    """A concentration limit with action reduce, breached: the midday-risk-check job is the one that reduces it.
    It fires at 13:00 New York, which on a half day is NYSE's close to the second: the breach is reported and the
    reduce is skipped (`market_closed`) on every half day, the breaching position held over the holiday."""
    bought = buy_spy(bus, project)
    write_config(project, risk={"concentration": {"max": 0.01, "action": "reduce"}})
    day = gateway.now().astimezone(ZoneInfo("America/New_York")).date()
    firings = scheduled_firings(lambda job: job["intent"] == "risk-check" and not job.get("dryRun"), day)
    assert firings, "no scheduled risk-check fires on a weekday"

    replies = [fire(bus, gateway, when, job) for when, job in firings]
    assert all(r["status"] == "ok" for r in replies), replies
    reduced = [entry for r in replies for entry in r["result"].get("reduced", [])]
    refs = {o["orderRef"] for entry in reduced for o in entry.get("instruments", []) if o.get("orderRef")}
    sold = sales(gateway, refs)
    assert sold, (
        f"on the half day {day} the risk-check fired at {[f'{w:%H:%M}' for w, _ in firings]} New York (NYSE closed "
        f"at 13:00): reduce {[e.get('skipped', 'placed') for e in reduced]}; the broker still holds "
        f"{gateway.positions().get('SPY')} of the {bought:g} SPY that breach concentration"
    )
    assert gateway.positions()["SPY"] < bought
    wait_for(lambda: {e["execId"] for e in sold} <= {f["execId"] for f in mode_collection(project, "fills")},
             what="the reduce's sale booked by execId")  # fmt: skip
    wait_for(lambda: holdings(project) == {"dummy": {"SPY": gateway.positions()["SPY"]}}, what="books = broker")


@pytest.mark.parametrize("market_clock", ["2026-12-02T10:00:00-05:00"], ids=["full-day"], indirect=True)
def test_on_a_full_day_the_half_day_close_all_leaves_the_strategy_to_the_one_before_four(
    bus: Bus, gateway, project: str
):
    """The half day's 12:55 close-all also fires on every full day: there it must leave dummy as it is (SPY's
    session runs to 16:00, past its `closingWithin`), listing SPY in notClosing without an alert, and the 15:55 job
    flattens it."""
    write_config(project, strategies={"dummy": {"flatAtClose": "close"}})
    bought = buy_spy(bus, project)
    day = gateway.now().astimezone(ZoneInfo("America/New_York")).date()
    (early_when, early_job), (late_when, late_job) = scheduled_firings(
        lambda job: job["intent"] == "close-all" and job.get("params", {}).get("flatAtClose") is True, day
    )
    assert (f"{early_when:%H:%M}", f"{late_when:%H:%M}") == ("12:55", "15:55")
    before = {o["orderRef"] for o in gateway.orders()}

    early = fire(bus, gateway, early_when, early_job)
    assert early["status"] == "ok", early
    assert early["result"]["notClosing"] == ["SPY"]
    assert not early["result"].get("alert"), early["result"]
    assert {o["orderRef"] for o in gateway.orders()} == before, "the 12:55 job placed an order on a full day"
    assert holdings(project) == {"dummy": {"SPY": bought}}

    late = fire(bus, gateway, late_when, late_job)
    assert late["status"] == "ok", late
    assert "notClosing" not in late["result"]
    refs = {line["orderRef"] for line in late["result"]["instruments"] if line.get("orderRef")}
    sold = sales(gateway, refs)
    assert sum(e["shares"] for e in sold) == bought
    wait_for(lambda: {e["execId"] for e in sold} <= {f["execId"] for f in mode_collection(project, "fills")},
             what="the sale booked by execId")  # fmt: skip
    wait_for(lambda: "dummy" not in holdings(project), what="dummy flat in the books")


ES = {"ES": {"secType": "FUT", "exchange": "CME", "currency": "USD"}}


def _es_allocation(weight: float) -> dict[str, Any]:
    request = allocation({"ES": weight})
    request["params"]["strategyParams"]["dummy"]["instruments"] = ES
    return request


@pytest.mark.parametrize("market_clock", ["2026-12-02T10:00:00-05:00"], ids=["full-day"], indirect=True)
def test_the_eod_close_all_still_flattens_a_flat_at_close_strategys_future(bus: Bus, gateway, project: str):
    """dummy is marked `flatAtClose: close` and holds ES. Before decision 64 the 15:55 eod-close-all closed
    everything the strategy held. Now both close-all jobs carry `closingWithin: 600`, and CME Globex's session (like
    IDEALPRO's) ends at 17:00 New York: at 15:55 ES closes in 65 minutes, so it is put in notClosing and left; at
    12:55 likewise. No job ever flattens a futures (or forex) position of a flatAtClose strategy any more: it is
    held overnight, every night, and eod-check reports it notFlat."""
    write_config(
        project,
        exposure={"overall": 1.0, "strategies": {"dummy": 0.9}},
        strategies={"dummy": {"flatAtClose": "close"}},
    )
    reply = bus.reply_to(bus.publish(_es_allocation(0.5)))
    assert reply["status"] == "ok", reply
    (line,) = reply["result"]["instruments"]
    assert line["outcome"] == "filled", line
    symbol, bought = line["instrument"], float(line["target"])
    assert bought > 0
    wait_for(lambda: holdings(project) == {"dummy": {symbol: bought}}, what="the ES buy booked")

    day = gateway.now().astimezone(ZoneInfo("America/New_York")).date()
    firings, replies, refs = fire_flat_at_close_jobs(bus, gateway, day)
    sold = [e for e in gateway.executions() if e["orderRef"] in refs and e["side"] == "SLD"]
    answered = [
        (f"{w:%H:%M}", r["status"], (r.get("result") or {}).get("notClosing"))
        for (w, _), r in zip(firings, replies, strict=True)
    ]
    assert sum(e["shares"] for e in sold) == bought, (
        f"the flatAtClose close-all jobs ({answered}) left dummy's {bought:g} {symbol} open over night"
    )
    wait_for(lambda: {e["execId"] for e in sold} <= {f["execId"] for f in mode_collection(project, "fills")},
             what="the sale booked by execId")  # fmt: skip
    wait_for(lambda: "dummy" not in holdings(project), what="dummy flat in the books")


@pytest.mark.parametrize("market_clock", ["2026-12-02T10:00:00-05:00"], ids=["full-day"], indirect=True)
def test_the_half_day_close_all_on_a_full_day_is_not_refused_for_a_closed_market_it_would_not_trade(
    bus: Bus, gateway, project: str
):
    """dummy (flatAtClose: close) holds SPY and SAP on Xetra (closed from 11:30 New York). On a full day the 12:55
    half-day-close-all is meant to find nothing closing and do nothing (decision 64). SPY is kept (`keep`), so it is
    no longer among the instruments the market check counts; SAP, closed, is then the only one, and the partial
    close's rule "rejected only when every touched market is closed" rejects the whole close-all `market_closed`:
    an error reply every weekday at 12:55, which the 15:55 run with the same holdings answers ok with SAP in
    closedMarkets. Expected: ok, SPY in notClosing, SAP in closedMarkets, nothing placed."""
    write_config(project, strategies={"dummy": {"flatAtClose": "close"}})
    body = allocation({"SPY": 0.05, "SAP": 0.05})
    body["params"]["strategyParams"]["dummy"]["instruments"] = {"SAP": {"exchange": "IBIS", "currency": "EUR"}}
    reply = bus.reply_to(bus.publish(body))
    assert reply["status"] == "ok", reply
    assert {line["outcome"] for line in reply["result"]["instruments"]} == {"filled"}, reply["result"]
    wait_for(lambda: set(holdings(project).get("dummy", {})) == {"SPY", "SAP"}, what="both buys booked")
    before = {o["orderRef"] for o in gateway.orders()}

    day = gateway.now().astimezone(ZoneInfo("America/New_York")).date()
    (when, job), *_ = scheduled_firings(lambda job: job["name"] == "half-day-close-all", day)
    early = fire(bus, gateway, when, job)
    assert {o["orderRef"] for o in gateway.orders()} == before, "the 12:55 job placed an order on a full day"
    assert early["status"] == "ok", f"the 12:55 close-all on a full day was refused: {early.get('error')}"
    assert early["result"].get("notClosing") == ["SPY"], early["result"]
