"""``services.trainer.api.deps``: one transaction per request (committed on success, rolled back on
an error, committed before the response is sent), and reads in a session that writes nothing."""

from __future__ import annotations

import typing
from collections.abc import Generator, Iterator
from typing import cast

import pytest
from sqlalchemy.orm import Session

from services.trainer.api.deps import (
    ReadSessionDep,
    SessionDep,
    get_read_session,
    get_session,
)
from shared.registry.db import Registry, open_registry
from shared.registry.models import TrainingJobRow
from shared.settings import SharedSettings
from tests.trainer.conftest import BASE


@pytest.fixture
def reg(settings: SharedSettings) -> Iterator[Registry]:
    registry = open_registry(settings)
    yield registry
    registry.dispose()


def a_job(job_id: str) -> TrainingJobRow:
    return TrainingJobRow(
        id=job_id,
        status="queued",
        base_model=BASE,
        adapter_name="t",
        training_file="file-x",
        config={"training_file": "file-x"},
    )


def stored(reg: Registry, job_id: str) -> bool:
    with reg.read_session() as s:
        return s.get(TrainingJobRow, job_id) is not None


def test_a_request_session_commits_when_the_request_succeeds(reg: Registry) -> None:
    deps = get_session(reg)
    next(deps).add(a_job("ftjob-ok"))
    with pytest.raises(StopIteration):
        next(deps)
    assert stored(reg, "ftjob-ok")


def test_a_request_session_rolls_back_when_the_request_fails(reg: Registry) -> None:
    deps = cast(Generator[Session, None, None], get_session(reg))
    next(deps).add(a_job("ftjob-bad"))
    with pytest.raises(RuntimeError):
        deps.throw(RuntimeError("the route failed"))
    assert not stored(reg, "ftjob-bad")


def test_a_read_session_writes_nothing(reg: Registry) -> None:
    deps = get_read_session(reg)
    session = next(deps)
    session.add(a_job("ftjob-read"))
    session.flush()
    with pytest.raises(StopIteration):
        next(deps)
    assert not stored(reg, "ftjob-read")


@pytest.mark.parametrize("alias", [SessionDep, ReadSessionDep])
def test_sessions_end_before_the_response_is_sent(alias: object) -> None:
    # scope="function": the commit happens before the response, so a client reading right after
    # a 200 sees what it created.
    depends = typing.get_args(alias)[1]
    assert depends.scope == "function"
