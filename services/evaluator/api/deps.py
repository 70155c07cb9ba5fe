"""Dependency wiring: one registry and one settings object per app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.evaluator.config import EvaluatorSettings
from shared.registry.db import Registry


def get_settings(request: Request) -> EvaluatorSettings:
    settings: EvaluatorSettings = request.app.state.settings
    return settings


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


SettingsDep = Annotated[EvaluatorSettings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
