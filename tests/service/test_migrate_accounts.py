"""`consumer migrate-accounts`: the books from before accounts, copied under the account, once (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.support import every_document, firestore_client

ACCOUNT = "DU123456"

# The unscoped layout as the consumer wrote it before accounts, with documents that exist only as parents
# (tradingModes/paper, marketData/SPY) and a live mode that belongs to another account.
LEGACY: dict[str, dict[str, Any]] = {
    "config/paper": {"tradingEnabled": True, "exposure": {"overall": 1.0}},
    "config/live": {"tradingEnabled": False},
    "tradingModes/paper/holdings/dummy": {"strategy": "dummy", "positions": {"756733": {"quantity": 7}}},
    "tradingModes/paper/fills/0001f4e8.65a1b2c3.01.01": {"orderRef": "alloc-1", "shares": 7},
    "tradingModes/paper/openOrders/alloc-2": {"orderRef": "alloc-2", "state": "working", "filled": 3.0},
    "tradingModes/paper/requests/abc": {"state": "done", "reply": {"status": "ok"}},
    "tradingModes/paper/marketData/SPY/bars/1 day@2026-06-16": {"bars": [{"close": 520.0}]},
    "tradingModes/live/holdings/dummy": {"strategy": "dummy", "positions": {}},
    "activity/run-paper": {"tradingMode": "paper", "intent": "summary"},
    "activity/run-live": {"tradingMode": "live", "intent": "summary"},
}


def migrate(project: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "--account", ACCOUNT, "migrate-accounts", *args],
        env={**os.environ, "GOOGLE_CLOUD_PROJECT": project, "TRADING_MODE": "paper"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stored(project: str) -> dict[str, dict[str, Any]]:
    return {path: snapshot.to_dict() for path, snapshot in every_document(project).items()}


def test_the_old_books_are_copied_under_the_account_once_and_never_overwritten(project: str) -> None:
    db = firestore_client(project)
    for path, data in LEGACY.items():
        db.document(path).set(data)

    first = migrate(project)
    paper = {p: d for p, d in LEGACY.items() if "live" not in p}
    assert first == {"account": ACCOUNT, "tradingMode": "paper", "copied": len(paper), "alreadyThere": 0}
    after = stored(project)
    moved = {path: data for path, data in after.items() if path.startswith(f"accounts/{ACCOUNT}/")}
    assert moved == {f"accounts/{ACCOUNT}/{path}": data for path, data in paper.items()}
    # Copied, not moved: the old documents are all still there.
    assert {p: after[p] for p in LEGACY} == LEGACY

    # The consumer changes a migrated document; a second run (an interrupted first one, run again) keeps it.
    changed = f"accounts/{ACCOUNT}/tradingModes/paper/openOrders/alloc-2"
    db.document(changed).update({"state": "closed"})
    again = migrate(project)
    assert again == {"account": ACCOUNT, "tradingMode": "paper", "copied": 0, "alreadyThere": len(paper)}
    assert db.document(changed).get().to_dict()["state"] == "closed"

    # The live books belong to the live account: copied only when asked for that mode.
    live = migrate(project, "--mode", "live")
    assert live["copied"] == 3
    assert db.document(f"accounts/{ACCOUNT}/config/live").get().to_dict() == LEGACY["config/live"]
