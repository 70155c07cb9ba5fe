"""Task metrics on one (prediction, reference) pair: exact match, token F1, accuracy, JSON checks.

Every function returns a float per item (1.0/0.0 for pass/fail metrics) so candidate and baseline
can be paired item by item. The normalisation that defines each metric is recorded with its entry
in ``catalogue.py``.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from typing import Any

_WS = re.compile(r"\s+")
_FENCE = re.compile(r"^```(?:json|JSON)?\s*\n?(.*?)\n?```$", re.DOTALL)
_CJK_CLASS = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
# \w is Unicode-aware, so Cyrillic, Greek and accented Latin survive; CJK scripts have no spaces
# between words, so each of their characters is one token.
_TOKEN = re.compile(rf"{_CJK_CLASS}|(?:(?!{_CJK_CLASS})\w)+")


def normalize_ws(text: str) -> str:
    return _WS.sub(" ", text.strip())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_ws(prediction) == normalize_ws(reference))


def _loose(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return _WS.sub(" ", text).strip()


def accuracy(prediction: str, reference: str) -> float:
    """Label accuracy: equality after case, punctuation and whitespace normalisation."""
    return float(_loose(prediction) == _loose(reference))


def words(text: str) -> list[str]:
    """Casefolded word tokens; CJK runs are split into characters (no spaces in those scripts)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def parse_json(text: str) -> tuple[bool, Any]:
    """``(ok, value)``; a surrounding Markdown code fence is tolerated."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


def json_valid(prediction: str, reference: str = "") -> float:
    return float(parse_json(prediction)[0])


def json_match(prediction: str, reference: str) -> float:
    ok_p, pred = parse_json(prediction)
    ok_r, ref = parse_json(reference)
    return float(ok_p and ok_r and pred == ref)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "array"
    return "object"


def infer_schema(reference: Any) -> dict[str, Any]:
    """A JSON Schema with the reference's shape: same keys, same types, nothing extra."""
    kind = _json_type(reference)
    if kind == "object":
        return {
            "type": "object",
            "properties": {k: infer_schema(v) for k, v in reference.items()},
            "required": sorted(reference),
            "additionalProperties": False,
        }
    if kind == "array":
        return (
            {"type": "array", "items": infer_schema(reference[0])}
            if reference
            else {"type": "array"}
        )
    if kind in {"integer", "number"}:
        return {"type": "number"}
    return {"type": kind}


def schema_match(prediction: str, reference: str, schema: dict[str, Any] | None = None) -> float:
    import jsonschema

    ok, value = parse_json(prediction)
    if not ok:
        return 0.0
    if schema is None:
        ok_r, ref = parse_json(reference)
        if not ok_r:
            return 0.0
        schema = infer_schema(ref)
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0
