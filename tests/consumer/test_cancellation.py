"""A long-lived task that logs an error and goes on must still end when it is cancelled, even when a library turns
the cancellation into an error of its own (Firestore's rollback of a transaction that has no id yet)."""

from __future__ import annotations

import asyncio

from consumer.errors import reraise_if_cancelled


async def test_a_worker_that_logs_and_goes_on_ends_when_its_cancellation_arrives_as_a_library_error():
    waiting = asyncio.Event()
    failures: list[str] = []

    async def library_call() -> None:
        try:
            waiting.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("The transaction has no transaction ID, so it cannot be rolled back.") from None

    async def worker() -> None:
        for _ in range(3):  # a few rounds, not forever: without the check the test fails instead of hanging
            try:
                await library_call()
            except Exception as e:
                reraise_if_cancelled(e)
                failures.append(str(e))

    task = asyncio.create_task(worker())
    await waiting.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done, "the worker swallowed its cancellation and went on"
    assert task.cancelled()
    assert failures == []


async def test_an_error_outside_a_cancellation_is_left_to_the_caller():
    async def worker() -> str:
        try:
            raise ValueError("a booking that failed on its own")
        except ValueError as e:
            reraise_if_cancelled(e)
            return "logged, going on"

    assert await worker() == "logged, going on"
