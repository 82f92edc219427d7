"""The local paper configuration `make run` writes unless one exists: trading on, a share for every strategy.

Under it every README example and every job of infra/schedules.yaml answers `ok` (tests/service/test_operator.py):
a plain allocation runs only the strategies that need no params from the message, and dummy, which trades the
weights a message gives, has capital for the examples that name it.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions
from google.cloud import firestore

OVERALL_EXPOSURE = 0.9


def local_paper_config(strategies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`strategies`: each strategy's params schema, by id."""
    from jsonschema import Draft202012Validator

    # Equal shares that sum to at most 1, so overall x sum stays under the default leverage cap of 1.
    share = int(10_000 / max(1, len(strategies))) / 10_000
    runnable = sorted(s for s, schema in strategies.items() if Draft202012Validator(schema).is_valid({}))
    return {
        "tradingEnabled": True,
        "allowLive": False,
        "leverageCap": 1.0,
        "exposure": {"overall": OVERALL_EXPOSURE, "strategies": dict.fromkeys(sorted(strategies), share)},
        "defaultStrategies": runnable,
        "orderDefaults": {"orderType": "MKT", "algo": "Adaptive", "adaptivePriority": "Normal", "tif": "DAY"},
        "cashBalancer": {"threshold": 1000.0},
        # The paper scenario's login has live data for US ETFs only: 3 takes delayed data for the rest (10167),
        # where 1 would be refused (354) and leave those instruments without a price.
        "marketDataType": 3,
    }


def seed_config(project: str, account: str, trading_mode: str = "paper") -> bool:
    """True when written; an existing document (yours, edited) is never overwritten."""
    from consumer.store.layout import config_path
    from consumer.strategies import discover

    db = firestore.Client(project=project)
    try:
        strategies = {sid: cls.params_schema for sid, cls in discover().items()}
        db.document(config_path(account, trading_mode)).create(local_paper_config(strategies))
        return True
    except exceptions.AlreadyExists:
        return False
    finally:
        db.close()
