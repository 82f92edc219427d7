"""Many writes in batches under Firestore's cap of 500 writes per commit."""

from __future__ import annotations

from typing import Any

from google.cloud.firestore import AsyncClient, AsyncDocumentReference

BATCH_LIMIT = 400  # under Firestore's 500, with room for field transforms that count as writes


class BatchedWrites:
    """Commits whenever the open batch is full, whatever the write was: no boundary can be stepped over."""

    def __init__(self, db: AsyncClient, limit: int = BATCH_LIMIT) -> None:
        self._db = db
        self._limit = limit
        self._batch = db.batch()
        self._pending = 0
        self.count = 0

    async def set(self, ref: AsyncDocumentReference, data: dict[str, Any], merge: bool = False) -> None:
        self._batch.set(ref, data, merge=merge)
        self._pending += 1
        self.count += 1
        if self._pending >= self._limit:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            await self._batch.commit()
            self._batch = self._db.batch()
            self._pending = 0
