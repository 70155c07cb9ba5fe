"""Artifact stores and trees the artifact tests put in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.artifacts import ArtifactStore


def s3_store(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    import boto3

    from shared.artifacts_s3 import S3ArtifactStore

    for var, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    bucket = f"b{tmp_path.name.replace('_', '-').lower()[-40:]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3ArtifactStore(
        f"s3://{bucket}/artifacts", cache_dir=tmp_path / "cache", endpoint_url=endpoint
    )


def adapter_dir(root: Path, weights: bytes = b"weights") -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"r": 8}')
    (root / "adapter_model.safetensors").write_bytes(weights)
    (root / "sub").mkdir()
    (root / "sub" / "note.txt").write_text("lineage")
    return root
