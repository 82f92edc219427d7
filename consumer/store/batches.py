"""Many writes in batches under Firestore's caps on a commit: 500 writes, and 10 MiB of request."""

from __future__ import annotations

import json
from typing import Any

from google.cloud.firestore import AsyncClient, AsyncDocumentReference

BATCH_LIMIT = 400  # under Firestore's 500, with room for field transforms that count as writes
# Firestore refuses a request over 10 MiB (the emulator's gRPC server, over 4 MiB); counted as compact JSON, which
# is about the size of a document's encoding, with room to spare for the difference.
MAX_COMMIT_BYTES = 3 * 1024 * 1024


class BatchedWrites:
    """Commits whenever the open batch is full, by count or by size, whatever the write was: no boundary can be
    stepped over. Counted by writes alone, 300 documents of a day's 1-minute bars (50 kB each) were one commit of
    13 MiB, which Firestore refuses."""

    def __init__(self, db: AsyncClient, limit: int = BATCH_LIMIT, max_bytes: int = MAX_COMMIT_BYTES) -> None:
        self._db = db
        self._limit = limit
        self._max_bytes = max_bytes
        self._batch = db.batch()
        self._pending = 0
        self._bytes = 0
        self.count = 0

    async def set(self, ref: AsyncDocumentReference, data: dict[str, Any], merge: bool = False) -> None:
        size = len(json.dumps(data, default=str, separators=(",", ":")))
        if self._pending and self._bytes + size > self._max_bytes:
            await self.flush()
        self._batch.set(ref, data, merge=merge)
        self._pending += 1
        self._bytes += size
        self.count += 1
        if self._pending >= self._limit:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            await self._batch.commit()
            self._batch = self._db.batch()
            self._pending = 0
            self._bytes = 0
