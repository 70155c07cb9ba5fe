"""`shared.registry.names`: adapter and alias names are validated before use."""

from __future__ import annotations

import pytest

from shared.errors import NotFoundError, ValidationError
from shared.registry import adapters as reg
from shared.registry.db import Registry
from tests.shared.registry.seed import SHA_A, add_version, seed_base


def test_names_are_validated(registry: Registry) -> None:
    seed_base(registry)
    v1 = add_version(registry, SHA_A)
    with pytest.raises(ValidationError, match="alias 'Prod!'"), registry.session() as s:
        reg.set_alias(s, "bot", "Prod!", v1)
    with pytest.raises(ValidationError, match=r"adapter name '\.\./x'"):
        reg.check_adapter_name("../x")
    with pytest.raises(NotFoundError, match="no adapter version or alias"), registry.session() as s:
        reg.resolve(s, "ghost:prod")
