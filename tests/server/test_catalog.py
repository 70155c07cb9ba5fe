"""`services.server.catalog`: the model list names the base, versions and aliases with metadata."""

from __future__ import annotations

import openai

from tests.server.conftest import Stack


def test_models_lists_base_versions_and_aliases_with_metadata(stack: Stack) -> None:
    v1 = stack.register(stack.adapter(), "support")
    stack.set_alias("support", "prod", v1)
    stack.reconcile()
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="admin-key")
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-base", v1, "support:prod", "support"}
    meta = models["support"].model_extra["loraplex"]  # type: ignore[index]
    assert meta["kind"] == "alias" and meta["target"] == v1 and meta["rank"] == 4
    assert models[v1].model_extra["parent"] == "tiny-base"  # type: ignore[index]
