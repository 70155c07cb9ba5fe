"""Dependency wiring: one registry and one settings object per app (``shared.service_app``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.evaluator.config import EvaluatorSettings
from shared.service_app import RegistryDep as RegistryDep
from shared.service_app import get_settings

SettingsDep = Annotated[EvaluatorSettings, Depends(get_settings)]
