"""The contract-details cache in Firestore (accounts/{account}/contracts, docs/firestore.md): the broker's
`ContractStore`, shared by the deployment's processes so a restart does not ask IB for every contract again.

Every failure (Firestore away, a timeout, a document this code cannot read) is `CacheUnavailable` or a miss: the
cache only ever saves requests to IB, it never fails an intent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar

from google.api_core.exceptions import GoogleAPIError
from google.cloud.firestore_v1.base_query import FieldFilter

from consumer.broker.contract_cache import CachedContract, CacheUnavailable
from consumer.store.batches import BatchedWrites
from consumer.store.layout import Layout

T = TypeVar("T")
# Past this the broker asks IB: 200 contract details at IB's 50 messages/s take 4 s, so a slower read saves nothing.
CACHE_TIMEOUT_SECONDS = 3.0


def to_document(key: str, entry: CachedContract) -> dict[str, Any]:
    return {
        "key": key,
        "conId": entry.con_id,  # by_con_id finds an entry by it
        "contract": dict(entry.contract),
        "timeZoneId": entry.time_zone,
        "liquidHours": entry.liquid_hours,
        "tradingHours": entry.trading_hours,
        "minTick": entry.min_tick,
        "fetchedAt": entry.fetched_at,
    }


def from_document(data: Mapping[str, Any]) -> CachedContract | None:
    """The entry, or None for a document of another shape (an older version's): it is fetched again."""
    try:
        fetched_at = data["fetchedAt"]
        if not isinstance(fetched_at, datetime) or not isinstance(data["contract"], Mapping):
            return None
        return CachedContract(
            contract=dict(data["contract"]),
            time_zone=str(data["timeZoneId"]),
            liquid_hours=str(data["liquidHours"]),
            trading_hours=str(data["tradingHours"]),
            min_tick=float(data["minTick"]),
            fetched_at=fetched_at,
        )
    except (KeyError, TypeError, ValueError):
        return None


class FirestoreContracts:
    """`ContractStore` over Firestore for one account's layout."""

    def __init__(self, layout: Layout, timeout: float = CACHE_TIMEOUT_SECONDS) -> None:
        self._layout = layout
        self._timeout = timeout

    async def get_all(self, keys: Collection[str]) -> dict[str, CachedContract]:
        if not keys:
            return {}
        refs = {self._layout.contract(key).id: key for key in keys}

        async def read() -> dict[str, CachedContract]:
            out: dict[str, CachedContract] = {}
            docs = self._layout.db.get_all([self._layout.contract(key) for key in keys])
            async for snapshot in docs:
                entry = from_document(snapshot.to_dict() or {}) if snapshot.exists else None
                if entry is not None:
                    out[refs[snapshot.id]] = entry
            return out

        return await self._guard(read())

    async def find(self, con_id: int) -> tuple[str, CachedContract] | None:
        async def read() -> tuple[str, CachedContract] | None:
            query = self._layout.contracts().where(filter=FieldFilter("conId", "==", con_id)).limit(1)
            async for snapshot in query.stream():
                data = snapshot.to_dict() or {}
                entry = from_document(data)
                if entry is not None:
                    return str(data.get("key", "")), entry
            return None

        return await self._guard(read())

    async def put_all(self, entries: Mapping[str, CachedContract]) -> None:
        async def write() -> None:
            writes = BatchedWrites(self._layout.db)
            for key, entry in entries.items():
                await writes.set(self._layout.contract(key), to_document(key, entry))
            await writes.flush()

        await self._guard(write())

    async def delete(self, keys: Collection[str]) -> None:
        async def write() -> None:
            batch = self._layout.db.batch()
            for key in keys:
                batch.delete(self._layout.contract(key))
            await batch.commit()

        if keys:
            await self._guard(write())

    async def _guard(self, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self._timeout)
        except (GoogleAPIError, TimeoutError, OSError) as e:
            raise CacheUnavailable(f"{type(e).__name__}: {e}") from e
