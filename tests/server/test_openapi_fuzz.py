"""Property-based run of the server's OpenAPI (schemathesis), against fake engines: no 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.server.conftest import ADMIN, Stack, build_stack, stop_stack


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = build_stack(Path(tmp_path_factory.mktemp("fuzz")), engines=1)
    try:
        s.wait_ready()
        vid = s.register(s.adapter(), "support")
        s.set_alias("support", "prod", vid)
        s.reconcile()
        yield s
    finally:
        stop_stack(s)


def test_no_server_errors(fuzz_stack: Stack) -> None:
    # schemathesis' pytest plugin does not run under pytest 9, so drive its strategies directly.
    schema = schemathesis.openapi.from_url(fuzz_stack.url + "/openapi.json")
    failures: list[str] = []
    operations = 0
    calls: list[int] = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: schemathesis.Case) -> None:
            # The admin key is sent too, so admin routes are exercised past the auth check.
            response = case.call(base_url=fuzz_stack.url, headers=ADMIN)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
                )

        run()
    assert operations >= 12 and len(calls) >= 5 * operations
    assert failures == []
