"""One-shot move of the books from before accounts (config/{mode}, tradingModes/{mode}/..., activity/...) under
accounts/{account}/ (consumer/store/layout.py): `consumer migrate-accounts --account ID`.

Copies, never moves: the old documents stay until someone deletes them, so a wrong --account costs nothing but a
re-run. Idempotent: a document already at its new path is left as it is (the consumer may have changed it since),
so the command can be run again after an interruption. Only the given trading mode is copied (a paper account and
a live account have different ids); activity records are copied when their tradingMode is that mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.api_core import exceptions
from google.cloud import firestore

from consumer.store.layout import account_path, config_path, mode_path


@dataclass
class Migration:
    """What `migrate-accounts` did: documents copied under accounts/{account}/ and those already there (left alone)."""

    copied: int = 0
    kept: int = 0  # already at the new path: left alone

    def as_dict(self) -> dict[str, int]:
        return {"copied": self.copied, "alreadyThere": self.kept}


def migrate_to_account(db: firestore.Client, account: str, trading_mode: str) -> Migration:
    done = Migration()
    _copy(db.document(f"config/{trading_mode}"), db.document(config_path(account, trading_mode)), done)
    _copy_tree(db.document(f"tradingModes/{trading_mode}"), db.document(mode_path(account, trading_mode)), done)
    activity = db.document(account_path(account)).collection("activity")
    for snapshot in (
        db.collection("activity").where(filter=firestore.FieldFilter("tradingMode", "==", trading_mode)).stream()
    ):
        _create(activity.document(snapshot.id), snapshot.to_dict() or {}, done)
    return done


def _copy(source: firestore.DocumentReference, target: firestore.DocumentReference, done: Migration) -> None:
    snapshot = source.get()
    if snapshot.exists:
        _create(target, snapshot.to_dict() or {}, done)


def _copy_tree(source: firestore.DocumentReference, target: firestore.DocumentReference, done: Migration) -> None:
    """The document and everything under it, including under documents that exist only as parents."""
    _copy(source, target, done)
    for collection in source.collections():
        for child in collection.list_documents():
            _copy_tree(child, target.collection(collection.id).document(child.id), done)


def _create(target: firestore.DocumentReference, data: dict, done: Migration) -> None:
    try:
        target.create(data)
        done.copied += 1
    except exceptions.AlreadyExists:
        done.kept += 1
