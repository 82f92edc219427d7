"""How an intent can end, other than with a result.

The split decides what happens to the message: a `Failure` is final (reply with its status, ack), a `Transient`
is worth retrying (nack; Pub/Sub redelivers with backoff). Anything else is unexpected and is treated as
transient, so a bug cannot silently drop a message: it retries and ends in the dead-letter topic with its error.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from google.api_core import exceptions as google_exceptions

ECHO_LIMIT = 120  # characters of a message's content that an error reply or a log line repeats


def reraise_if_cancelled(e: Exception) -> None:
    """For a long-lived task that logs an Exception and goes on: a cancellation that a library turned into an error
    of its own (a Firestore transaction cancelled before it had an id fails its rollback with ValueError) still
    ends the task. Swallowed, it kept the bookkeeper running and every shutdown waited out its close timeout."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from e


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """What an error may echo of the message: at most `limit` characters, marked when cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class Failure(Exception):
    """A final outcome other than success, reported in the reply as `{code, message}`."""

    status: ClassVar[Literal["error", "rejected"]] = "error"

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def as_reply(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


class BadRequest(Failure):
    """The message can never succeed as sent: undecodable, unknown intent, invalid params."""


class IntentError(Failure):
    """The intent ran and failed in a way a retry would not change (bad config, unknown strategy...)."""


class UnlistedInstrument(IntentError):
    """IB lists no contract for a conId it reported before (200: an expired future, a delisted stock). What holds
    one is kept as it is and named, the rest goes on: failed whole, one expired future in the books stopped every
    close-all, reduce and eod-check until someone edited the books."""

    def __init__(self, con_id: int, message: str) -> None:
        super().__init__("unknown_instrument", message)
        self.con_id = con_id


class Rejected(Failure):
    """Policy refused the intent before it did anything: kill switch, live guard, stale, market closed."""

    status = "rejected"


class GatewayReadOnly(Rejected):
    """IB Gateway's API is read-only: it refuses orders, cancels and the order lists with 321 (decision 26)."""

    def __init__(self) -> None:
        super().__init__(
            "gateway_read_only",
            "IB Gateway's API is read-only (IBC ReadOnlyApi=yes, gateway-image's default for live): it refuses "
            "orders, cancels and the lists of open and completed orders (IB 321). Set read_only_api = false "
            "(IB_READ_ONLY_API=no) to trade; nothing was placed",
        )


class LeaseLost(Exception):
    """The run may not place: the claim is another's now (`held` False: that owner runs the request and replies),
    or still this process's with too little lease left to be sure of it (`held` True: its renewals failed; the
    run hands the claim back, as after any transient failure, so the redelivery runs the request at once)."""

    def __init__(self, message: str, held: bool) -> None:
        super().__init__(message)
        self.held = held


class ClaimTakenOver(Exception):
    """Another process took this run's claim while it ran (decision 39): the run stores, releases and publishes
    nothing, since the claim and the one reply are the new owner's."""


class Transient(Exception):
    """Retry later: the gateway is down, Firestore is unavailable, the connection dropped mid-intent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Google API errors that mean "try again" rather than "your request is wrong".
TRANSIENT_GOOGLE_ERRORS: tuple[type[Exception], ...] = (
    google_exceptions.ServiceUnavailable,
    google_exceptions.DeadlineExceeded,
    google_exceptions.InternalServerError,
    google_exceptions.Aborted,
    google_exceptions.TooManyRequests,
    google_exceptions.Unknown,
    google_exceptions.RetryError,
)


def as_transient(exc: BaseException) -> Transient:
    """Names an exception that escaped a handler, for the log and the dead-letter record."""
    if isinstance(exc, Transient):
        return exc
    if isinstance(exc, ConnectionError):
        return Transient("gateway_disconnected", f"connection to the gateway lost: {str(exc) or type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return Transient("timeout", f"timed out: {str(exc) or 'no answer in time'}")
    if isinstance(exc, TRANSIENT_GOOGLE_ERRORS):
        return Transient("store_unavailable", f"Google API unavailable: {exc}")
    return Transient("internal", f"{type(exc).__name__}: {exc}")
