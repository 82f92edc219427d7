"""Everything an intent may use, built once on the broker loop and passed to handlers explicitly."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from google.cloud import firestore, pubsub_v1

from consumer.bookkeeper import Bookkeeper
from consumer.broker.gateway import Gateway
from consumer.broker.instruments import Instruments
from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.schemas import Schemas
from consumer.store.activity import ActivityLog
from consumer.store.books import Books
from consumer.store.layout import Layout
from consumer.store.requests import RequestLedger
from consumer.store.trading_config import ConfigStore, DeploymentLimits
from consumer.transport.publishing import Publishing


@dataclass
class Services:
    settings: Settings
    schemas: Schemas
    gateway: Gateway
    db: firestore.AsyncClient
    layout: Layout
    ledger: RequestLedger
    config_store: ConfigStore
    activity: ActivityLog
    publishing: Publishing
    instruments: Instruments
    books: Books
    bookkeeper: Bookkeeper
    metrics: Metrics

    @classmethod
    def create(
        cls, settings: Settings, schemas: Schemas, publisher: pubsub_v1.PublisherClient, metrics: Metrics
    ) -> Services:
        """Must be called on the broker loop: the IB object and the async Firestore client bind to it."""
        db = firestore.AsyncClient(project=settings.project)
        layout = Layout(db, settings.trading_mode)
        gateway = Gateway(settings, metrics=metrics)
        books = Books(layout)
        # Unique per process, so a claim left by a killed process is recognisably someone else's.
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        return cls(
            settings=settings,
            schemas=schemas,
            gateway=gateway,
            db=db,
            layout=layout,
            ledger=RequestLedger(layout, owner=owner, lease_seconds=settings.claim_lease),
            config_store=ConfigStore(layout, schemas, DeploymentLimits(settings.allow_live, settings.leverage_cap_max)),
            activity=ActivityLog(layout),
            publishing=Publishing(
                publisher,
                project=settings.project,
                reply_topic=settings.reply_topic,
                dead_letter_topic=settings.dead_letter_topic,
                subscription=settings.intents_subscription,
                schemas=schemas,
            ),
            instruments=Instruments(gateway.ib),
            books=books,
            # A write-ahead order never placed (its intent died and was not re-run) is closed after this long.
            bookkeeper=Bookkeeper(gateway, books, stale_pending_after=max(3600.0, settings.intent_timeout * 2)),
            metrics=metrics,
        )

    def start(self) -> None:
        """On the broker loop: live booking hooks the IB object's events before the first connect."""
        self.bookkeeper.start()

    async def close(self) -> None:
        await self.bookkeeper.stop()
        await self.gateway.stop()
        self.db.close()
