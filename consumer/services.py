"""Everything an intent may use, built once on the broker loop and passed to handlers explicitly."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field, replace

from google.cloud import firestore

from consumer.bookkeeper import Bookkeeper
from consumer.broker.broker import Broker
from consumer.broker.gateway import Gateway
from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.schemas import Schemas
from consumer.store.activity import ActivityLog
from consumer.store.books import Books
from consumer.store.contracts import FirestoreContracts
from consumer.store.dry_run import DryRunClient
from consumer.store.layout import Layout
from consumer.store.requests import RequestLedger
from consumer.store.trading_config import ConfigStore, DeploymentLimits
from consumer.transport.publishing import Publishing, make_reply_client


@dataclass
class Services:
    """What intents, the dispatcher and the sweeps are given: built once by `create` on the broker loop.

    `broker` is the one way to IB; `gateway` is the connection's lifecycle, for the process alone. `db`, `layout`,
    `ledger`, `books`, `activity` and `config_store` are Firestore, all scoped to `account`; `publishing` is the
    reply and dead-letter topics. `for_dry_run` is the same with a store that writes nothing; `for_account` the
    same for another account this deployment serves (one login managing several: same gateway, other books).
    """

    settings: Settings
    account: str
    schemas: Schemas
    gateway: Gateway  # the connection's lifecycle (run, stop, state); everything asked of IB goes through broker
    broker: Broker
    db: firestore.AsyncClient
    layout: Layout
    ledger: RequestLedger
    config_store: ConfigStore
    activity: ActivityLog
    publishing: Publishing
    books: Books
    bookkeeper: Bookkeeper
    metrics: Metrics
    # What a dry run's intent is given instead (for_dry_run); built with the rest, on the broker loop.
    dry_run_view: Services | None = field(default=None, repr=False)
    # Every served account's view, this one included: the same dict in each (filled by `create`).
    accounts: dict[str, Services] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, settings: Settings, schemas: Schemas, metrics: Metrics) -> Services:
        """Must be called on the broker loop: the IB object and the async Firestore client bind to it."""
        if not settings.accounts:
            raise ValueError("Services need the accounts served (IB_ACCOUNTS): the books are keyed by account")
        db = firestore.AsyncClient(project=settings.project)
        account = settings.accounts[0]
        layout = Layout(db, account, settings.trading_mode)
        gateway = Gateway(settings, metrics=metrics)
        broker = Broker(gateway, FirestoreContracts(layout))
        books = Books(layout)
        # Unique per process, so a claim left by a killed process is recognisably someone else's.
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        services = cls(
            settings=settings,
            account=account,
            schemas=schemas,
            gateway=gateway,
            broker=broker,
            db=db,
            layout=layout,
            ledger=RequestLedger(layout, owner=owner, lease_seconds=settings.claim_lease),
            config_store=ConfigStore(layout, schemas, DeploymentLimits(settings.allow_live, settings.leverage_cap_max)),
            activity=ActivityLog(layout),
            publishing=Publishing(
                make_reply_client(),
                project=settings.project,
                reply_topic=settings.reply_topic,
                dead_letter_topic=settings.dead_letter_topic,
                subscription=settings.intents_subscription,
                schemas=schemas,
            ),
            books=books,
            # A write-ahead order never placed (its intent died and was not re-run) is closed after this long.
            bookkeeper=Bookkeeper(
                broker, books, stale_pending_after=max(3600.0, settings.intent_timeout * 2), account=account
            ),
            metrics=metrics,
        )
        services.dry_run_view = services._read_only(DryRunClient(db))
        services.accounts[account] = services
        for other in settings.accounts[1:]:
            view = services._scoped(db, other, owner=owner)
            view.dry_run_view = view._read_only(DryRunClient(db))
            services.accounts[other] = view
        return services

    def for_account(self, account: str | None) -> Services:
        """The view of a served account (None: this one)."""
        return self if account is None else self.accounts[account]

    def _scoped(self, db: firestore.AsyncClient, account: str, owner: str) -> Services:
        layout = Layout(db, account, self.settings.trading_mode)
        books = Books(layout)
        return replace(
            self,
            account=account,
            layout=layout,
            ledger=RequestLedger(layout, owner=owner, lease_seconds=self.settings.claim_lease),
            config_store=ConfigStore(
                layout, self.schemas, DeploymentLimits(self.settings.allow_live, self.settings.leverage_cap_max)
            ),
            activity=ActivityLog(layout),
            books=books,
            bookkeeper=Bookkeeper(
                self.broker, books, stale_pending_after=self.bookkeeper.stale_pending_after, account=account
            ),
            dry_run_view=None,
        )

    def for_dry_run(self) -> Services:
        """These services with a store that writes nothing: a dry run's intent cannot book, record or claim."""
        if self.dry_run_view is None:
            raise RuntimeError("Services built without a dry-run view")
        return self.dry_run_view

    def _read_only(self, db: DryRunClient) -> Services:
        layout = Layout(db, self.account, self.settings.trading_mode)
        # One booking at a time across both views, as Books promises: they read the same documents.
        books = Books(layout, lock=self.books.lock)
        return replace(
            self,
            db=db,
            layout=layout,
            ledger=RequestLedger(layout, owner=self.ledger.owner, lease_seconds=self.settings.claim_lease),
            config_store=ConfigStore(
                layout, self.schemas, DeploymentLimits(self.settings.allow_live, self.settings.leverage_cap_max)
            ),
            activity=ActivityLog(layout),
            books=books,
            # Never started: it only runs the sweep (reconcile) a dry-run intent asks for, against these books.
            bookkeeper=Bookkeeper(
                self.broker, books, stale_pending_after=self.bookkeeper.stale_pending_after, account=self.account
            ),
            dry_run_view=None,
            accounts={},
        )

    def start(self) -> None:
        """On the broker loop: live booking hooks the broker's events before the first connect."""
        for view in self.accounts.values():
            view.bookkeeper.start()

    async def close(self) -> None:
        for view in self.accounts.values():
            await view.bookkeeper.stop()
        await self.gateway.stop()
        await self.publishing.close()
        self.db.close()
