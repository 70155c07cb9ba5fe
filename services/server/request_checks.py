"""The checks a proxied request passes before any engine lease is taken.

The body is parsed once; the fields the proxy itself acts on or that size the work (``n``,
``echo``, the ``*logprobs``, ``stream``, token limits) are checked here, so a request the engine
would refuse, or one the proxy would misread, never holds an engine. Everything else is vLLM's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from services.server.routes import ProxiedRoute
from shared.errors import LoraplexError, ValidationError


def parse_request(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object with a ``model`` string; 400 or 422 otherwise."""
    try:
        payload = json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:  # 400 like the other services (shared.http): not JSON at all
        raise LoraplexError(
            f"request body is not valid JSON: {exc}", param="body", code="invalid_request"
        ) from exc
    except RecursionError:
        raise LoraplexError(
            "the request body nests too deeply to parse", param="body", code="invalid_request"
        ) from None
    if not isinstance(payload, dict):
        raise ValidationError("request body must be a JSON object", param="body")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("'model' is required and must be a string", param="model")
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def needs_prompt_logprobs(route: ProxiedRoute, payload: dict[str, Any]) -> bool:
    """Whether the engine will compute log-probabilities of the prompt tokens (``payload`` has
    passed :func:`check_request`)."""
    if payload.get("prompt_logprobs") is not None:
        return True
    return (
        route.echo_scores_prompt
        and payload.get("echo") is True
        and (payload.get("logprobs") is not None)
    )


# OpenAI's own cap on choices per request; vLLM has none and each choice takes a sequence slot.
MAX_CHOICES = 128
# vLLM's default --max-logprobs: the engine refuses more anyway.
MAX_LOGPROBS = 20
# Integer fields: (least, most); None: no upper bound here (the engine checks it).
_INTEGERS: dict[str, tuple[int, int | None]] = {
    "n": (1, MAX_CHOICES),
    "best_of": (1, MAX_CHOICES),
    "top_logprobs": (0, MAX_LOGPROBS),
    "prompt_logprobs": (0, MAX_LOGPROBS),
    "max_tokens": (1, None),
    "max_completion_tokens": (1, None),
    "min_tokens": (0, None),
}
_BOOLEANS = ("stream", "echo")
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty")


def check_request(route: ProxiedRoute, payload: dict[str, Any]) -> None:
    """Types and ranges of the fields this proxy reads or that size the work, as JSON types.

    Strict on purpose: ``"echo": "false"`` is true in Python but false to vLLM's parser, so a
    lenient reading here could skip the isolation the engine needs. Integral floats (``2.0``)
    become ints. Raises ValidationError (422) naming the field.
    """
    for name, (least, most) in _INTEGERS.items():
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = payload[name] = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(f"'{name}' must be an integer", param=name)
        if value < least or (most is not None and value > most):
            bound = f"between {least} and {most}" if most is not None else f"at least {least}"
            raise ValidationError(f"'{name}' must be {bound}, not {value}", param=name)
    for name in _BOOLEANS:
        value = payload.get(name)
        if value is not None and not isinstance(value, bool):
            raise ValidationError(f"'{name}' must be true or false", param=name)
    for name in _NUMBERS:
        value = payload.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValidationError(f"'{name}' must be a finite number", param=name)
    temperature = payload.get("temperature")
    if temperature is not None and temperature < 0:
        raise ValidationError("'temperature' must be at least 0", param="temperature")
    logprobs = payload.get("logprobs")
    if logprobs is not None:
        if route.logprobs == "flag":
            if not isinstance(logprobs, bool):
                raise ValidationError("'logprobs' must be true or false", param="logprobs")
        else:
            if isinstance(logprobs, float) and logprobs.is_integer():
                logprobs = payload["logprobs"] = int(logprobs)
            if (
                not isinstance(logprobs, int)
                or isinstance(logprobs, bool)
                or not 0 <= logprobs <= MAX_LOGPROBS
            ):
                raise ValidationError(
                    f"'logprobs' must be an integer between 0 and {MAX_LOGPROBS}",
                    param="logprobs",
                )
    options = payload.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise ValidationError(
            "'stream_options' must be an object with a boolean 'include_usage'",
            param="stream_options",
        )
