"""`services.server.engines`: an engine's residency book-keeping, and what a restart forgets."""

from __future__ import annotations

from services.server.engines import Engine, EngineState, Residency, ResidencyState
from tests.server.fakes import make_engine, make_info


def test_only_a_loaded_version_is_usable() -> None:
    engine = make_engine("e0", 0, ["bot@v1"])
    engine.adapters["bot@v2"] = Residency(make_info("bot@v2"))  # still loading
    assert engine.usable("bot@v1") is engine.adapters["bot@v1"]
    assert engine.usable("bot@v2") is None and engine.usable("bot@v3") is None
    assert engine.adapters["bot@v2"].idle.is_set()  # nothing in flight yet


def test_a_reset_forgets_residency_and_starts_a_new_generation() -> None:
    engine = Engine(id="e0", url="http://x", managed=True)
    assert engine.state is EngineState.STARTING and not engine.ready
    engine.adapters["bot@v1"] = Residency(make_info("bot@v1"), ResidencyState.LOADED)
    lock = engine.lock_for("bot@v1")
    assert engine.lock_for("bot@v1") is lock
    engine.reset()
    assert (engine.generation, engine.adapters, engine.locks) == (1, {}, {})
    assert engine.lock_for("bot@v1") is not lock
