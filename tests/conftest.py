"""Fixtures shared by every test: isolated settings, registries on SQLite and PostgreSQL, the
embedded base model (prepared once per machine and cached), GPU gating."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.basemodel import ResolvedBaseModel, prepare_embedded_model
from shared.registry.db import Registry, open_registry
from shared.settings import SharedSettings

REPO = Path(__file__).resolve().parents[1]
# Converting the GGUF takes about a minute; one prepared copy per checkout serves every test run.
MODEL_CACHE = Path(os.environ.get("LORAPLEX_TEST_CACHE", REPO / ".loraplex" / "test-cache"))
PG_ADMIN_URL = os.environ.get(
    "LORAPLEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> SharedSettings:
    for key in list(os.environ):
        if key.startswith("LORAPLEX_") and not key.startswith("LORAPLEX_TEST"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(data_dir))
    return SharedSettings()


def _pg_available() -> str | None:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    import sqlalchemy as sa

    name = f"loraplex_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_settings(
    request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> SharedSettings:
    """Settings whose registry is SQLite or PostgreSQL (each test runs on both)."""
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(data_dir))
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("LORAPLEX_DATABASE_URL", url)
    else:
        monkeypatch.delenv("LORAPLEX_DATABASE_URL", raising=False)
    return SharedSettings()


@pytest.fixture
def registry(registry_settings: SharedSettings) -> Iterator[Registry]:
    reg = open_registry(registry_settings)
    yield reg
    reg.dispose()


@pytest.fixture(scope="session")
def base_model() -> ResolvedBaseModel:
    """The embedded base model, prepared once into the test cache (about a minute the first time)."""
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    return prepare_embedded_model(SharedSettings(data_dir=MODEL_CACHE))


@pytest.fixture
def model_settings(
    settings: SharedSettings, base_model: ResolvedBaseModel, data_dir: Path
) -> SharedSettings:
    """Settings whose data dir already holds the prepared embedded model (linked, not copied)."""
    models = data_dir / "models"
    models.mkdir(exist_ok=True)
    target = models / base_model.path.name
    if not target.exists():
        target.mkdir()
        for item in base_model.path.iterdir():
            os.link(item, target / item.name) if item.is_file() else shutil.copytree(
                item, target / item.name
            )
    return settings


def random_reward_adapter(base_dir: Path, folder: Path, seed: int, pad_token_id: int) -> Path:
    """A reward model folder as the reward recipe saves it (peft SEQ_CLS: LoRA on q/v and a
    random one-output score head, saved whole), untrained, on the model at ``base_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_dir, num_labels=1, dtype=torch.float32
    )
    base.config.pad_token_id = pad_token_id
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder
