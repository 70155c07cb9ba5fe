"""vLLM engines as the server sees them: each engine's state and the adapters resident on it.

An engine is vLLM's own OpenAI server with runtime LoRA updating on, started and watched by
:mod:`services.server.supervisor` and called through :mod:`services.server.engine_client`. An
engine that comes back gets a new ``generation`` with no adapters recorded, and the reconciler
reloads what it should hold.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass, field

from services.server.isolation import IsolationLock
from services.server.names import VersionInfo


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    STOPPED = "stopped"


class ResidencyState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass
class Residency:
    """One adapter version on one engine."""

    version: VersionInfo
    state: ResidencyState = ResidencyState.LOADING
    desired: bool = False
    """Loaded because an alias or pin needs it (the reconciler unloads it when that ends);
    otherwise it was loaded on demand and is evicted least-recently-used first."""
    retiring: bool = False
    """No longer needed by an alias or pin: unload once its in-flight requests finish."""
    loaded_at: float | None = None
    load_seconds: float | None = None
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def usable(self) -> bool:
        return self.state is ResidencyState.LOADED


@dataclass
class Engine:
    """Book-keeping for one engine; mutated only on the event loop."""

    id: str
    url: str
    managed: bool
    state: EngineState = EngineState.STARTING
    generation: int = 0
    served_name: str = ""
    patched: bool = False
    in_flight: int = 0
    restarts: int = 0
    last_error: str = ""
    ready_since: float | None = None
    adapters: dict[str, Residency] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    # Prompt log-probability requests on an engine without the plugin run alone.
    isolation: IsolationLock = field(default_factory=IsolationLock)

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    def lock_for(self, key: str) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def usable(self, key: str) -> Residency | None:
        res = self.adapters.get(key)
        return res if res is not None and res.usable else None

    def reset(self) -> None:
        """Forget residency: the engine process is new (or its state is unknown)."""
        self.generation += 1
        self.adapters.clear()
        self.locks.clear()
