"""`services.server.routing`: which engine a request goes to."""

from __future__ import annotations

from services.server.names import BASE, Target
from services.server.routing import choose
from tests.server.fakes import make_engine, make_info


def test_routing_prefers_residency_then_fewest_in_flight() -> None:
    target = Target(make_info("bot@v1"))
    e0 = make_engine("e0", 5, [])
    e1 = make_engine("e1", 9, ["bot@v1"])
    e2 = make_engine("e2", 7, ["bot@v1"])
    assert choose([e0, e1, e2], target, overload=64) == (e2, True)
    assert choose([e0, e1, e2], BASE, overload=64) == (e0, True)
    # Every holder overloaded and another engine less busy: spread there (load needed).
    assert choose([e0, e1, e2], target, overload=6) == (e0, False)
    # Nobody holds it: least busy, load needed.
    assert choose([e0], target, overload=64) == (e0, False)
    assert choose([make_engine("d", 0, [], ready=False)], target, overload=64) is None


def test_a_full_version_goes_to_the_least_busy_engine_of_its_own() -> None:
    import dataclasses

    target = Target(dataclasses.replace(make_info("big@v1"), kind="full"))
    engines = [make_engine("full-1", 3, []), make_engine("full-2", 1, [])]
    assert choose(engines, target, overload=8) == (engines[1], True)
    assert choose([make_engine("full-3", 0, [], ready=False)], target, overload=8) is None
