"""Dependency wiring: one registry per app (``shared.service_app``), one transaction per request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.orm import Session

from services.trainer.config import TrainerSettings
from shared.registry.db import Registry
from shared.service_app import RegistryDep as RegistryDep
from shared.service_app import get_registry, get_settings


def get_session(registry: Annotated[Registry, Depends(get_registry)]) -> Iterator[Session]:
    with registry.session() as session:
        yield session


def get_read_session(registry: Annotated[Registry, Depends(get_registry)]) -> Iterator[Session]:
    # Reads take no write lock: on SQLite a GET must never queue behind (or block) a writer.
    with registry.read_session() as session:
        yield session


SettingsDep = Annotated[TrainerSettings, Depends(get_settings)]
# scope="function": the transaction commits before the response is sent, so a client that reads
# right after a 200 sees what it created (with the default "request" scope the commit ran after
# the response, and a reader that takes no lock could miss it).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
