"""Trainer settings: durations are spelled ``*_s``; the old ``*_SECONDS`` variables still work."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.trainer.config import DEPRECATED_DURATIONS, TrainerSettings
from shared.settings import load_settings


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_DURATIONS.items()))
def test_an_old_duration_variable_is_read_with_a_warning(
    old: str,
    new: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(f"LORAPLEX_{old.upper()}", "7.5")
    with caplog.at_level(logging.WARNING, logger="loraplex.trainer.config"):
        settings = load_settings(TrainerSettings)
    assert getattr(settings, new) == 7.5
    assert f"LORAPLEX_{old.upper()} is deprecated; use LORAPLEX_{new.upper()}" in caplog.text


def test_the_new_name_wins_over_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAPLEX_HEARTBEAT_SECONDS", "7.5")
    monkeypatch.setenv("LORAPLEX_WORKER_HEARTBEAT_S", "1.5")
    with caplog.at_level(logging.WARNING, logger="loraplex.trainer.config"):
        settings = load_settings(TrainerSettings)
    assert settings.worker_heartbeat_s == 1.5
    assert "LORAPLEX_HEARTBEAT_SECONDS is deprecated and ignored" in caplog.text


def test_defaults_need_no_old_names(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=tmp_path)
    assert (settings.worker_poll_s, settings.worker_heartbeat_s, settings.worker_stale_s) == (
        2.0,
        5.0,
        60.0,
    )
