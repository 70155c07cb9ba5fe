"""Settings: defaults, readable errors for bad values, wrong database URLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.registry.db import open_registry
from shared.settings import SharedSettings, load_settings


def test_defaults_live_in_the_data_dir(settings: SharedSettings, data_dir: Path) -> None:
    assert settings.data_dir == data_dir
    assert settings.database_url == f"sqlite:///{data_dir / 'registry.db'}"
    assert settings.artifact_url == str(data_dir / "artifacts")
    assert settings.base_model == "smollm2-135m-instruct"


def test_default_data_dir_is_dot_loraplex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORAPLEX_DATA_DIR", raising=False)
    assert SharedSettings().data_dir == tmp_path / ".loraplex"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the file case")
def test_unwritable_data_dir_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(locked / "sub"))
    with pytest.raises(ConfigError) as err:
        load_settings(SharedSettings)
    assert "LORAPLEX_DATA_DIR" in str(err.value)


def test_data_dir_that_is_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(blocker))
    with pytest.raises(ConfigError) as err:
        load_settings(SharedSettings)
    assert "data_dir (LORAPLEX_DATA_DIR)" in str(err.value)
    assert "not writable" in str(err.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://root@localhost/x", "backend 'mysql' is not supported"),
    ],
)
def test_bad_database_urls_are_refused_at_construction(
    settings: SharedSettings, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setenv("LORAPLEX_DATABASE_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings(SharedSettings)
    assert message in str(err.value)
    assert "LORAPLEX_DATABASE_URL" in str(err.value)


def test_unreachable_database_is_a_config_error(
    settings: SharedSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAPLEX_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    cfg = load_settings(SharedSettings)
    assert cfg.database_url.startswith("postgresql+psycopg://")
    with pytest.raises(ConfigError, match="cannot open the registry database"):
        open_registry(cfg)


def test_bad_log_level(settings: SharedSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="unknown log level 'loud'"):
        load_settings(SharedSettings)


def test_unknown_variable_names_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import check_environment

    with pytest.raises(ConfigError) as info:
        check_environment({"LORAPLEX_API_KEY": "sk-x", "LORAPLEX_DATA_DIR": "/tmp"})
    assert "LORAPLEX_API_KEY is not a loraplex setting; did you mean LORAPLEX_API_KEYS?" in str(
        info.value
    )
    check_environment({"LORAPLEX_API_KEYS": "{}", "LORAPLEX_TEST_CACHE": "1", "PATH": "/bin"})
