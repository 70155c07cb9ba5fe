"""Provenance stamps (headers and the ``loraplex`` body field) and the per-version info gauge,
without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.server.metrics import OTHER, ServerMetrics
from services.server.names import BASE, Target, VersionInfo
from services.server.provenance import Provenance, add_body_field

BASE_SHA = "b" * 64


def _info(vid: str, sha: str = "a" * 64) -> VersionInfo:
    name, _, number = vid.partition("@v")
    return VersionInfo(vid, name, int(number), sha, "base", BASE_SHA, 8, 1, datetime.now(UTC))


def test_adapter_stamp_names_version_content_hash_and_base() -> None:
    stamp = Provenance("base", BASE_SHA).stamp(Target(_info("bot@v2", "c" * 64)))
    headers = {k.decode(): v.decode() for k, v in stamp.headers}
    assert headers == {
        "x-loraplex-adapter-version": "bot@v2",
        "x-loraplex-adapter-sha256": "c" * 64,
        "x-loraplex-base-model": "base",
        "x-loraplex-base-sha256": BASE_SHA,
        "x-loraplex-model": "bot@v2",
    }
    body = json.loads(add_body_field(b'{"id":"x","choices":[]}', b"application/json", stamp.field))
    assert body == {
        "id": "x",
        "choices": [],
        "loraplex": {
            "version": "bot@v2",
            "sha256": "c" * 64,
            "base_model": "base",
            "base_sha256": BASE_SHA,
        },
    }


def test_base_stamp_names_the_base_and_its_weights() -> None:
    provenance = Provenance("base", BASE_SHA)
    stamp = provenance.stamp(BASE)
    headers = dict(stamp.headers)
    assert headers[b"x-loraplex-adapter-version"] == b"base"
    assert b"x-loraplex-adapter-sha256" not in headers
    assert headers[b"x-loraplex-base-sha256"] == BASE_SHA.encode()
    assert provenance.stamp(BASE) is stamp  # built once
    field = json.loads(add_body_field(b"{}", b"", stamp.field))["loraplex"]
    assert field == {"version": "base", "base_model": "base", "base_sha256": BASE_SHA}


def test_body_field_only_in_json_objects() -> None:
    field = Provenance("base", BASE_SHA).stamp(BASE).field
    spaced = add_body_field(b'{"a": 1}\n', b"application/json; charset=utf-8", field)
    assert json.loads(spaced)["a"] == 1 and "loraplex" in json.loads(spaced)
    for data, content_type in [
        (b"[1, 2]", b"application/json"),
        (b"not json", b"text/plain"),
        (b'{"a": 1}', b"text/plain"),
        (b"", b"application/json"),
    ]:
        assert add_body_field(data, content_type, field) == data


def test_version_info_gauge_follows_the_label_cap() -> None:
    metrics = ServerMetrics("base", max_adapters=2)
    for target, sha in [
        (BASE, BASE_SHA),
        (Target(_info("bot@v1", "1" * 64)), "1" * 64),
        (Target(_info("bot@v2", "2" * 64)), "2" * 64),  # over the cap: counted as other
    ]:
        metrics.series(metrics.adapter_labels(target), sha)
    samples = [s for f in metrics.version_info.collect() for s in f.samples]
    assert {(s.labels["adapter"], s.labels["version"], s.labels["sha256"]) for s in samples} == {
        ("base", "base", BASE_SHA),
        ("bot", "v1", "1" * 64),
    }
    assert all(s.labels["adapter"] != OTHER for s in samples)
