"""Our metrics as Hugging Face ``evaluate`` modules, shipped as files and loaded from them.

``evaluate.load("rouge")`` fetches a script from the hub and fails offline (or silently falls back
to a stale cache); :func:`load` only ever reads the module files next to this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODULES = {"rouge": "loraplex_rouge", "sacrebleu": "loraplex_sacrebleu"}
HERE = Path(__file__).parent


def module_path(name: str) -> Path:
    try:
        return HERE / MODULES[name]
    except KeyError:
        raise KeyError(f"no local evaluate module {name!r}; known: {sorted(MODULES)}") from None


def load(name: str, **kwargs: Any) -> Any:
    """``evaluate.load`` of a shipped module; the hub is never contacted."""
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    return evaluate.load(str(module_path(name)), **kwargs)
