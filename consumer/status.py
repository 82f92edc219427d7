"""`consumer status`: what an operator checks first, from the health endpoint and Firestore."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumer.config import Settings

Fetch = Callable[[str], tuple[int, dict[str, Any]]]
RECENT_RUNS = 300


def gather_status(settings: Settings, health_url: str, fetch: Fetch) -> dict[str, Any]:
    from google.cloud import firestore

    from consumer.store.layout import account_path, config_path

    report: dict[str, Any] = {"project": settings.project, "tradingMode": settings.trading_mode}
    try:
        code, body = fetch(f"{health_url.rstrip('/')}/readyz")
        report["consumer"] = {"reachable": True, "ready": code == 200, **body}
    except OSError as e:
        report["consumer"] = {"reachable": False, "ready": False, "error": f"{health_url}: {e}"}

    db = firestore.Client(project=settings.project)
    try:
        # --account or IB_ACCOUNTS, else the consumer's first account, else the only account with books.
        served = report["consumer"].get("accounts") or []
        account = settings.account or (served[0] if served else "")
        if not account:
            with_books = [ref.id for ref in db.collection("accounts").list_documents()]
            report["accountsInFirestore"] = with_books
            account = with_books[0] if len(with_books) == 1 else ""
        report["account"] = account or None
        if not account:
            report["config"] = None
            report["lastRuns"] = {}
            return report
        config = db.document(config_path(account, settings.trading_mode)).get()
        data = config.to_dict() if config.exists else None
        report["config"] = {
            "exists": data is not None,
            "tradingEnabled": bool(data and data.get("tradingEnabled")),
            "allowLive": bool(data and data.get("allowLive")),
            "exposure": (data or {}).get("exposure"),
        }
        recent = (
            db.document(account_path(account))
            .collection("activity")
            .order_by("finishedAt", direction=firestore.Query.DESCENDING)
            .limit(RECENT_RUNS)
            .stream()
        )
        last: dict[str, dict[str, Any]] = {}
        for doc in recent:
            run = doc.to_dict() or {}
            if run.get("tradingMode") != settings.trading_mode or not run.get("intent"):
                continue
            last.setdefault(
                run["intent"],
                {k: run.get(k) for k in ("status", "finishedAt", "durationMs", "requestId", "dryRun", "error")},
            )
        report["lastRuns"] = dict(sorted(last.items()))
    finally:
        db.close()
    return report


def render_status(report: dict[str, Any]) -> str:
    consumer = report["consumer"]
    config = report["config"] or {"exists": False}
    if not consumer["reachable"]:
        state = f"not reachable ({consumer['error']})"
    else:
        state = (
            f"{'ready' if consumer['ready'] else 'NOT READY'}: gateway {consumer.get('gateway')}, "
            f"{'pulling' if consumer.get('subscribed') else 'not pulling'}, client id {consumer.get('clientId')}, "
            f"up {consumer.get('uptimeSeconds')}s"
        )
    if report["config"] is None:
        found = ", ".join(report.get("accountsInFirestore") or []) or "none"
        switch = f"unknown: which account? give --account (accounts with books: {found})"
    elif not config["exists"]:
        switch = "no config document: trading is off"
    else:
        switch = "trading ENABLED" if config["tradingEnabled"] else "trading DISABLED (kill switch)"
        if report["tradingMode"] == "live":
            deployment = consumer.get("allowLive")  # unknown (None) when the consumer is not reachable
            if config["allowLive"] and deployment:
                switch += ", live allowed"
            elif not config["allowLive"]:
                switch += ", live NOT allowed (config/live allowLive)"
            else:
                switch += (
                    ", live NOT allowed (ALLOW_LIVE)"
                    if deployment is False
                    else ", live allowed by config/live (ALLOW_LIVE unknown)"
                )
    lines = [
        f"project       {report['project']}",
        f"account       {report['account'] or '?'}",
        f"trading mode  {report['tradingMode']}",
        f"consumer      {state}",
        f"kill switch   {switch}",
        "last runs:" if report["lastRuns"] else "last runs:    none recorded",
    ]
    for intent, run in report["lastRuns"].items():
        error = run.get("error") or {}
        lines.append(
            f"  {intent:<22} {run.get('status', '?'):<8} {run.get('finishedAt', '')}  "
            f"{run.get('durationMs') or 0:.0f} ms{'  ' + str(error.get('code')) if error else ''}"
        )
    return "\n".join(lines)
