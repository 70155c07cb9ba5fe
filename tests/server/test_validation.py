"""Adapters the server must refuse before loading, each with its reason, while serving goes on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.basemodel import ResolvedBaseModel, register_base_model
from tests.server.conftest import ADMIN, Stack
from tests.server.fakes import HIDDEN, VOCAB


def _break_config(folder: Path, text: str | None) -> Path:
    path = folder / "adapter_config.json"
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    return folder


def _truncate_weights(folder: Path) -> Path:
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return folder


def _other_base(stack: Stack) -> str:
    with stack.registry.session() as session:
        register_base_model(
            session, ResolvedBaseModel("other-base", stack.tmp, "f" * 64, "test", "llama")
        )
    return "other-base"


# kind -> (build the bad adapter folder from the stack, the reason the server gives)
BAD_KINDS: dict[str, tuple[Callable[[Any], Path], str]] = {
    "missing config": (
        lambda s: _break_config(s.adapter(), None),
        "adapter_config.json is missing",
    ),
    "unreadable config": (lambda s: _break_config(s.adapter(), "{oops"), "unreadable"),
    "not lora": (lambda s: s.adapter(peft_type="IA3"), "only LORA"),
    "rank too high": (lambda s: s.adapter(r=32), "max LoRA rank"),
    "dora": (lambda s: s.adapter(use_dora=True), "DoRA"),
    "bias": (lambda s: s.adapter(bias="all"), "bias"),
    "modules_to_save": (lambda s: s.adapter(modules_to_save=["lm_head"]), "modules_to_save"),
    "extra tokens": (
        lambda s: s.adapter(
            extra_tensors={
                "base_model.model.model.embed_tokens.weight": np.ones(
                    (VOCAB + 5, HIDDEN), np.float32
                )
            }
        ),
        "embedding",
    ),
    "target module base lacks": (
        lambda s: s.adapter(targets=("q_proj", "gate_proj")),
        "does not exist in the base model",
    ),
    "shapes of another model": (lambda s: s.adapter(in_features=64), "does not fit"),
    "zero B (no-op)": (lambda s: s.adapter(zero_b=True), "every LoRA B matrix is zero"),
    "truncated weights": (lambda s: _truncate_weights(s.adapter()), "truncated"),
}


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_bad_adapter_is_refused_with_its_reason(one_engine: Stack, kind: str) -> None:
    s = one_engine
    build, reason = BAD_KINDS[kind]
    vid = s.register(build(s), "bad")
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": vid, "prompt": "x"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "adapter_not_servable"
        assert any(reason in d for d in error["details"]), error["details"]
        r = c.post("/admin/adapters/load", json={"model": vid}, headers=ADMIN)
        assert r.status_code == 422
        # Serving goes on.
        assert (
            c.post("/v1/completions", json={"model": "tiny-base", "prompt": "x"}).status_code == 200
        )
    assert s.engines[0].loads == []  # nothing bad reached the engine


def test_wrong_base_by_registry_identity_is_refused(one_engine: Stack) -> None:
    s = one_engine
    vid = s.register(s.adapter(), "bad", base=_other_base(s))
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": vid, "prompt": "x"})
        assert r.status_code == 422
        assert "other-base" in r.json()["error"]["message"]


def test_same_base_name_with_other_weights_is_refused(one_engine: Stack) -> None:
    s = one_engine
    from services.server.names import VersionInfo

    vid = s.register(s.adapter(), "bad")
    with s.registry.session() as session:
        from shared.registry.models import AdapterVersionRow

        info = VersionInfo.from_row(session.get(AdapterVersionRow, vid))  # type: ignore[arg-type]
    from dataclasses import replace

    forged = replace(info, base_model_sha256="0" * 64)
    with pytest.raises(Exception) as exc:
        s.service.validator.check_version(forged)
    assert "same name, different model" in str(exc.value)


def test_a_full_fine_tune_is_never_loaded_as_an_adapter(one_engine: Stack) -> None:
    from dataclasses import replace

    from services.server.names import VersionInfo
    from shared.errors import ValidationError
    from shared.registry.models import AdapterVersionRow

    s = one_engine
    vid = s.register(s.adapter(), "shop")
    with s.registry.session() as session:
        info = VersionInfo.from_row(session.get(AdapterVersionRow, vid))  # type: ignore[arg-type]
    s.service.validator.check_version(info)  # the adapter itself loads
    with pytest.raises(ValidationError, match="full fine-tune, not a LoRA adapter"):
        s.service.validator.check_version(replace(info, kind="full"))


def test_files_changed_after_registration_are_refused(one_engine: Stack) -> None:
    s = one_engine
    folder = s.adapter()
    vid = s.register(folder, "bad")
    with s.registry.session() as session:
        from shared.registry.models import AdapterVersionRow

        sha = session.get(AdapterVersionRow, vid).sha256  # type: ignore[union-attr]
    stored = Path(s.store.root) / "trees" / sha / "adapter_config.json"
    stored.chmod(0o644)
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "lora_alpha": 999}))
    with s.client() as c:
        r = c.post("/v1/completions", json={"model": vid, "prompt": "x"})
    assert r.status_code in (409, 422)
    assert any("differ" in d for d in [r.json()["error"]["message"], *r.json()["error"]["details"]])


def test_links_out_of_the_store_are_refused(one_engine: Stack, tmp_path: Path) -> None:
    s = one_engine
    vid = s.register(s.adapter(), "linked")
    with s.registry.session() as session:
        from shared.registry.models import AdapterVersionRow

        sha = session.get(AdapterVersionRow, vid).sha256  # type: ignore[union-attr]
    tree = Path(s.store.root) / "trees" / sha
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    tree.chmod(0o755)
    (tree / "extra.json").symlink_to(outside)
    reasons = s.service.validator.check_location(tree)
    assert any("outside the artifact store" in r for r in reasons)
    with s.client() as c:
        assert c.post("/v1/completions", json={"model": vid, "prompt": "x"}).status_code == 422


def test_every_reason_is_reported_at_once(one_engine: Stack) -> None:
    s = one_engine
    vid = s.register(s.adapter(use_dora=True, bias="all", modules_to_save=["lm_head"]), "bad")
    with s.client() as c:
        details = c.post("/v1/completions", json={"model": vid, "prompt": "x"}).json()["error"][
            "details"
        ]
    assert len(details) >= 3


def test_upload_import_takes_adapters_larger_than_a_json_body(one_engine: Stack) -> None:
    """The upload route's limit is 16x max_body_bytes, not max_json_bytes (1 MiB): a real adapter
    (rank 8 on every linear layer of SmolLM2-135M is 18 MiB) was refused with 413."""
    files = [
        ("files", ("adapter_config.json", b"{}")),
        ("files", ("adapter_model.safetensors", b"\0" * (3 * 1024 * 1024))),
    ]
    with one_engine.client() as c:
        r = c.post("/admin/adapters/import", data={"name": "big"}, files=files, headers=ADMIN)
    assert r.status_code == 422, r.text  # validated (and refused), not cut off at the door


def test_upload_import_validates_then_registers(one_engine: Stack) -> None:
    s = one_engine
    good = s.adapter()
    files = [("files", (p.name, p.read_bytes())) for p in sorted(good.iterdir())]
    with s.client() as c:
        r = c.post("/admin/adapters/import", data={"name": "uploaded"}, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == "uploaded@v1" and r.json()["created"] is True
        r = c.post("/admin/adapters/import", data={"name": "uploaded"}, files=files, headers=ADMIN)
        assert r.json()["id"] == "uploaded@v1" and r.json()["created"] is False
        bad = s.adapter(use_dora=True)
        files = [("files", (p.name, p.read_bytes())) for p in sorted(bad.iterdir())]
        r = c.post("/admin/adapters/import", data={"name": "uploaded"}, files=files, headers=ADMIN)
        assert r.status_code == 422
        assert (
            c.post("/v1/completions", json={"model": "uploaded@v1", "prompt": "x"}).status_code
            == 200
        )
