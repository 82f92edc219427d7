"""The store a dry run gets: it reads through the real connection and acknowledges every write without making it.

Every Firestore write (a document's create/set/update/delete, a batch, a transaction) ends in the API's `commit`
(BulkWriter in `batch_write`); this client answers both itself, so the intent's code runs unchanged, computes what
it would write, and nothing reaches the database. One seam for every intent: a new one cannot forget to check.
A transaction's reads still take its locks, so a discarded commit rolls the transaction back to release them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1.types import BatchWriteResponse, CommitResponse, WriteResult
from google.protobuf.timestamp_pb2 import Timestamp


class DryRunClient(firestore.AsyncClient):
    """A Firestore client for dry runs: reads go to the real database, writes (commits, batch writes) are acknowledged
    and discarded, and an open transaction is rolled back. The store code runs unchanged on it.
    """

    def __init__(self, real: firestore.AsyncClient) -> None:
        super().__init__(project=real.project, database=real._database)
        self._real = real

    @property
    def _firestore_api(self) -> Any:
        # The real client's API (one connection for both); only the two write calls are answered here.
        return _DiscardingApi(self._real._firestore_api)


class _DiscardingApi:
    """The real client's API with `commit` and `batch_write` answered here, as if applied."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    async def commit(self, request: Any, metadata: Any = (), **_: Any) -> CommitResponse:
        writes = list(_field(request, "writes") or [])
        transaction = _field(request, "transaction")
        if transaction:
            await self._api.rollback(
                request={"database": _field(request, "database"), "transaction": transaction}, metadata=metadata
            )
        now = _now()
        return CommitResponse(write_results=[WriteResult(update_time=now) for _ in writes], commit_time=now)

    async def batch_write(self, request: Any, metadata: Any = (), **_: Any) -> BatchWriteResponse:
        writes = list(_field(request, "writes") or [])
        now = _now()
        return BatchWriteResponse(
            write_results=[WriteResult(update_time=now) for _ in writes], status=[{"code": 0} for _ in writes]
        )


def _field(request: Any, name: str) -> Any:
    return request.get(name) if isinstance(request, dict) else getattr(request, name, None)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp
