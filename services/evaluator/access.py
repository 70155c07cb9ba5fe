"""What a request may name: files under the allowed directories, endpoints configured in
settings, policies (inline, a file, or a registered body).

A request never chooses a URL the evaluator calls (and sends keys to), nor a file outside
``LORAPLEX_DATA_DIRS`` and the evaluator's own shipped directories; symlinks and ``..`` are
resolved before the check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import yaml

from services.evaluator.config import Endpoint, EvaluatorSettings
from services.evaluator.policy import Policy, load_policy, parse_policy
from services.evaluator.schemas import EvaluationCreate
from services.evaluator.suite import SUITES_DIR, TASKS_DIR, Suite
from shared.errors import NotFoundError, ValidationError

POLICIES_DIR = Path(__file__).with_name("policies")
# Shipped with the evaluator: built-in suites, task data (the forgetting check), example policies.
BUILTIN_DIRS = (SUITES_DIR, TASKS_DIR, POLICIES_DIR)


def _inline_policy(spec: str) -> bool:
    if "\n" in spec or "\x00" in spec or spec.strip().startswith("{"):
        return True
    try:
        return ":" in spec and not Path(spec).exists()
    except (OSError, ValueError):
        return True


def allowed_file(settings: EvaluatorSettings, value: str, param: str) -> Path:
    """``value`` as a file under the allowed directories, with symlinks and ``..`` resolved
    before the check (so neither a link nor a climb leads out)."""
    try:
        resolved = Path(value).resolve()
        roots = [*settings.allowed_data_dirs(), *(d.resolve() for d in BUILTIN_DIRS)]
        inside = any(resolved.is_relative_to(root) for root in roots)
        exists = inside and resolved.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValidationError(
            f"{param} {value!r} is not a usable path ({exc})", param=param
        ) from exc
    if not inside:
        # The allowed directories are not listed: they are the server's layout, not the caller's.
        raise ValidationError(
            f"{param} {value!r} is outside the directories the evaluator may read: pass a "
            "registered file id (upload it with the trainer's POST /v1/files) or a path under "
            "LORAPLEX_DATA_DIRS",
            param=param,
        )
    if not exists:
        raise NotFoundError(f"{param} file {value!r} does not exist", param=param)
    return resolved


def suite_spec(
    settings: EvaluatorSettings, spec: str | dict[str, Any] | None, param: str, local: bool
) -> str | dict[str, Any] | None:
    """A suite file named by a request must be under the allowed directories too."""
    if isinstance(spec, str) and not local and Path(spec).suffix:
        return str(allowed_file(settings, spec, param))
    return spec


def request_policy(
    settings: EvaluatorSettings, spec: str | dict[str, Any] | None, local: bool
) -> Policy | None:
    """The request's policy: inline YAML or a mapping, or a file (allowed dirs unless local)."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return parse_policy(yaml.safe_dump(spec), "<inline policy>")
    if _inline_policy(spec):
        return parse_policy(spec, "<inline policy>")
    return load_policy(spec if local else allowed_file(settings, spec, "policy"))


def policy_from_body(body: dict[str, Any], source: str) -> Policy:
    return parse_policy(yaml.safe_dump(body), source)


def _is_url(value: str) -> bool:
    return "://" in value or "/" in value or value.lower().startswith(("http:", "https:"))


def named_endpoint(settings: EvaluatorSettings, name: str, param: str) -> Endpoint:
    endpoints = settings.named_endpoints()
    known = ", ".join(sorted(endpoints)) or "none"
    if _is_url(name):
        raise ValidationError(
            f"{param}: {name!r} is a URL; the evaluator calls (and sends keys to) endpoints named "
            "in its settings only: name an endpoint configured in LORAPLEX_ENDPOINTS (or "
            f"'server' / 'judge' from LORAPLEX_SERVER_URL / LORAPLEX_JUDGE_URL); configured: {known}",
            param=param,
        )
    endpoint = endpoints.get(name)
    if endpoint is None:
        raise ValidationError(
            f"{param}: unknown endpoint {name!r}; configured endpoints: {known} "
            "(LORAPLEX_ENDPOINTS)",
            param=param,
        )
    return endpoint


def server_endpoint(
    settings: EvaluatorSettings, request: EvaluationCreate, local: bool
) -> tuple[str | None, Endpoint | None]:
    """(name, endpoint) of the server; a URL only in the operator's own (local) run."""
    if request.server_url is not None:
        if not local:
            raise ValidationError(
                "server_url: a request cannot choose a URL for the evaluator to call (and send "
                "its keys to); name an endpoint configured in the evaluator's settings with "
                "`server` (LORAPLEX_ENDPOINTS, or 'server' from LORAPLEX_SERVER_URL)",
                param="server_url",
            )
        if request.server is not None:
            raise ValidationError("give server or server_url, not both", param="server_url")
        try:
            # The operator's own CLI run: their URL, but no configured key goes there.
            return "(--server-url)", Endpoint(url=request.server_url)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"server_url {request.server_url!r} must start with http:// or https://",
                param="server_url",
            ) from exc
    if request.server is not None:
        return request.server, named_endpoint(settings, request.server, "server")
    default = settings.named_endpoints().get("server")
    return ("server", default) if default is not None else (None, None)


def judge_endpoint(
    settings: EvaluatorSettings, suite: Suite, server: tuple[str | None, Endpoint | None]
) -> tuple[str | None, Endpoint | None]:
    """(name, endpoint) of the judge: the suite's named one, else ``judge``, else the server."""
    if suite.judge.endpoint:
        name = suite.judge.endpoint
        return name, named_endpoint(settings, name, "suite.judge.endpoint")
    judge = settings.named_endpoints().get("judge")
    return ("judge", judge) if judge is not None else server
