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
