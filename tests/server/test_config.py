"""`services.server.config`: the server's settings, validated, from arguments and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.server.config import ServerSettings
from shared.errors import ConfigError
from shared.settings import load_settings


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_lora_rank"):
        load_settings(ServerSettings, data_dir=tmp_path, max_lora_rank=12)
    with pytest.raises(ConfigError, match="max_cpu_loras"):
        load_settings(ServerSettings, data_dir=tmp_path, max_loras=8, max_cpu_loras=4)
    with pytest.raises(ConfigError, match="http"):
        load_settings(ServerSettings, data_dir=tmp_path, engine_urls=["localhost:8000"])
    s = load_settings(ServerSettings, data_dir=tmp_path, engine_urls="http://a:1/, http://b:2")
    assert s.engine_urls == ["http://a:1", "http://b:2"] and s.attach_mode


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAPLEX_ENGINE_URLS", "http://a:1,http://b:2")
    monkeypatch.setenv("LORAPLEX_ENGINE_EXTRA_ARGS", "--enforce-eager --seed 3")
    monkeypatch.setenv("LORAPLEX_API_KEYS", '{"k1": ["bot"], "k2": ["*"]}')
    monkeypatch.setenv("LORAPLEX_ADMIN_KEY", "adm")
    s = load_settings(ServerSettings)
    assert s.engine_urls == ["http://a:1", "http://b:2"]
    assert s.engine_extra_args == ["--enforce-eager", "--seed", "3"]
    assert s.api_keys == {"k1": ["bot"], "k2": ["*"]}
    assert s.admin_key is not None and s.admin_key.get_secret_value() == "adm"
    monkeypatch.setenv("LORAPLEX_ENGINE_URLS", '["http://c:3"]')
    assert load_settings(ServerSettings).engine_urls == ["http://c:3"]


def test_engine_limit_and_full_engine_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="max_model_engines"):
        load_settings(ServerSettings, data_dir=tmp_path, engine_count=3, max_model_engines=2)
    with pytest.raises(ConfigError, match="full_engine_urls"):
        load_settings(ServerSettings, data_dir=tmp_path, full_engine_urls={"a@v1": "a:1"})
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORAPLEX_FULL_ENGINE_URLS", '{"big@v2": "http://big-v2:8000"}')
    assert load_settings(ServerSettings).full_engine_urls == {"big@v2": "http://big-v2:8000"}
