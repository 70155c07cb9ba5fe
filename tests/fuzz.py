"""A property-based run of a service's OpenAPI (schemathesis' strategies driven by hypothesis):
every generated request must answer below 500."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings


@dataclass
class FuzzResult:
    operations: int = 0
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        return len(self.statuses)


def fuzz_openapi(base_url: str, headers: dict[str, str], *, cases: int) -> FuzzResult:
    """Call every operation of ``base_url``'s OpenAPI with generated inputs, ``cases`` in all
    (spread evenly; at least 5 per operation), sending ``headers`` (the key) on each."""
    # schemathesis' pytest plugin does not run under pytest 9, so drive its strategies directly.
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json", headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    out = FuzzResult(operations=len(operations))
    per_operation = max(5, -(-cases // max(1, len(operations))))
    # Operations with few distinct inputs (no parameters) end early, so go round again until the
    # total is reached; each round draws new examples (no example database).
    for _round in range(20):
        if out.cases >= cases:
            break
        for operation in operations:
            _fuzz_one(operation, base_url, headers, per_operation, out)
    return out


def _fuzz_one(
    operation: Any, base_url: str, headers: dict[str, str], examples: int, out: FuzzResult
) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call(base_url=base_url, headers=headers)
        out.statuses.append(response.status_code)
        if response.status_code >= 500:
            out.failures.append(
                f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            )

    run()
