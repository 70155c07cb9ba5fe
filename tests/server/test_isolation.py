"""The isolation lock (services/server/isolation.py): exclusive requests run alone, shared ones
together, and a request that leaves while queued holds nothing."""

from __future__ import annotations

import asyncio

from services.server.isolation import IsolationLock


def test_exclusive_waits_for_shared_and_holds_new_shared_back() -> None:
    async def run() -> None:
        lock = IsolationLock()
        await lock.acquire(exclusive=False)
        await lock.acquire(exclusive=False)
        assert lock.shared == 2 and not lock.idle
        exclusive = asyncio.create_task(lock.acquire(exclusive=True))
        await asyncio.sleep(0)
        assert lock.exclusive_held and not exclusive.done()  # waits for the shared two
        lock.release(exclusive=False)
        lock.release(exclusive=False)
        await exclusive
        assert lock.idle
        shared = asyncio.create_task(lock.acquire(exclusive=False))
        await asyncio.sleep(0)
        assert not shared.done()  # held back while the exclusive one runs
        lock.release(exclusive=True)
        await shared
        assert lock.shared == 1 and not lock.exclusive_held
        lock.release(exclusive=False)
        assert lock.idle and lock.shared == 0

    asyncio.run(run())


def test_a_request_cancelled_while_queued_holds_nothing() -> None:
    async def run() -> None:
        lock = IsolationLock()
        await lock.acquire(exclusive=False)
        queued = asyncio.create_task(lock.acquire(exclusive=True))
        await asyncio.sleep(0)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert not lock.exclusive_held and lock.shared == 1
        lock.release(exclusive=False)
        assert lock.idle

    asyncio.run(run())


def test_waking_the_waiters_of_a_dead_engine() -> None:
    async def run() -> None:
        lock = IsolationLock()
        await lock.acquire(exclusive=False)
        waiting = asyncio.create_task(lock.acquire(exclusive=True))
        await asyncio.sleep(0)
        lock.wake_waiters()
        await asyncio.wait_for(waiting, timeout=1)
        assert lock.exclusive_held

    asyncio.run(run())
