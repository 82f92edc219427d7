"""What the broker keeps of an instrument's contract details across processes, and the store it keeps them in.

The store is injected (consumer.store.contracts implements it over Firestore), so this package stays free of
Firestore and the store free of ib_insync: this module imports neither.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

# The cache's day turns at midnight in New York, as the daily snapshots' does: one rule for every instrument.
TRADING_DAY_ZONE = ZoneInfo("America/New_York")


def trading_day(when: datetime) -> date:
    return when.astimezone(TRADING_DAY_ZONE).date()


@dataclass(frozen=True)
class CachedContract:
    """One instrument's contract details as `_instrument` needs them; `fetched_at` is the gateway's clock."""

    contract: Mapping[str, Any]  # the Contract's fields by ib_insync's names: Contract(**contract) rebuilds it
    time_zone: str
    liquid_hours: str
    trading_hours: str
    min_tick: float
    fetched_at: datetime

    @property
    def con_id(self) -> int:
        return int(self.contract.get("conId") or 0)

    def fresh_on(self, day: date) -> bool:
        """Fetched on this trading day: liquid/trading hours cover a few days only, so an older entry must not
        decide market hours."""
        return trading_day(self.fetched_at) >= day


class CacheUnavailable(Exception):
    """The store could not be read or written (Firestore away, a timeout): the broker asks IB instead."""


class ContractStore(Protocol):
    """Contract details shared by the deployment's processes, one entry per instrument key (`spec_key`)."""

    async def get_all(self, keys: Collection[str]) -> dict[str, CachedContract]:
        """The entries stored under these keys (one batched read); a key with none is left out."""
        ...

    async def find(self, con_id: int) -> tuple[str, CachedContract] | None:
        """An entry for this conId, with its key."""
        ...

    async def put_all(self, entries: Mapping[str, CachedContract]) -> None:
        """Stores these entries (batched writes), replacing what their keys held."""
        ...

    async def delete(self, keys: Collection[str]) -> None: ...
