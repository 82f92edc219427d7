"""The local paper configuration `make run` writes unless one exists: trading on, a share for every strategy."""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions
from google.cloud import firestore

OVERALL_EXPOSURE = 0.9


def local_paper_config(strategy_ids: list[str]) -> dict[str, Any]:
    # Equal shares that sum to at most 1, so overall x sum stays under the default leverage cap of 1.
    share = int(10_000 / max(1, len(strategy_ids))) / 10_000
    return {
        "tradingEnabled": True,
        "allowLive": False,
        "leverageCap": 1.0,
        "exposure": {"overall": OVERALL_EXPOSURE, "strategies": dict.fromkeys(sorted(strategy_ids), share)},
        "orderDefaults": {"orderType": "MKT", "algo": "Adaptive", "adaptivePriority": "Normal", "tif": "DAY"},
        "cashBalancer": {"threshold": 1000.0},
    }


def seed_config(project: str, trading_mode: str = "paper") -> bool:
    """True when written; an existing document (yours, edited) is never overwritten."""
    from consumer.strategies import discover

    db = firestore.Client(project=project)
    try:
        db.collection("config").document(trading_mode).create(local_paper_config(list(discover())))
        return True
    except exceptions.AlreadyExists:
        return False
    finally:
        db.close()
