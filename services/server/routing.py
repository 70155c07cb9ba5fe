"""Which engine serves a request.

An engine that already holds the adapter is preferred while it is not overloaded (fewer in-flight
requests than ``overload``), so adapters stay where they are instead of being loaded everywhere.
When every holder is overloaded and another ready engine is less busy, that one is chosen and the
adapter is loaded there too: hot adapters spread, cold ones stay in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.server.engines import Engine
from services.server.names import Target


def choose(engines: Sequence[Engine], target: Target, overload: int) -> tuple[Engine, bool] | None:
    """(engine, already holds the adapter) or None when no engine is ready. ``engines`` are the
    engines of the model the target runs on (the base's, or a full version's own)."""
    ready = [e for e in engines if e.ready]
    if not ready:
        return None
    least = min(ready, key=_load)
    if target.is_base or target.is_full:
        # Every engine of the group holds the model itself: no residency to prefer.
        return least, True
    holders = [e for e in ready if e.usable(target.key) is not None]
    if not holders:
        return least, False
    best = min(holders, key=_load)
    if best.in_flight < overload or least.in_flight >= best.in_flight or least in holders:
        return best, True
    return least, False


def _load(engine: Engine) -> tuple[int, str]:
    return (engine.in_flight, engine.id)
