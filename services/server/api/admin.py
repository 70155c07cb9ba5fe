"""Admin API: load, unload, pin, aliases, reconcile, upload. Mounted only with an admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from services.server.api.deps import Service, admin_only
from services.server.schemas import (
    AliasChange,
    AliasRequest,
    LoadRequest,
    PinRequest,
    ResidencyList,
    UnloadRequest,
    VersionOut,
)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_only)])


@router.post("/adapters/load", response_model=ResidencyList)
async def load(body: LoadRequest, service: Service) -> ResidencyList:
    """Validate and load a registered version now (evictable unless an alias or pin needs it)."""
    return await service.load(body.model, body.engines)


@router.post("/adapters/unload", response_model=ResidencyList)
async def unload(body: UnloadRequest, service: Service) -> ResidencyList:
    """Unload a version after its in-flight requests finish (refused if an alias or pin needs it)."""
    return await service.unload(body.model, body.engines)


@router.post("/adapters/pin")
async def pin(body: PinRequest, service: Service) -> dict[str, Any]:
    """Pin a version in the registry (every server keeps it loaded), then reconcile."""
    return await service.pin(body.model, True)


@router.post("/adapters/unpin")
async def unpin(body: PinRequest, service: Service) -> dict[str, Any]:
    """Remove a pin, then reconcile (the version is unloaded unless an alias needs it)."""
    return await service.pin(body.model, False)


@router.put("/aliases/{adapter}/{alias}", response_model=AliasChange)
async def set_alias(adapter: str, alias: str, body: AliasRequest, service: Service) -> AliasChange:
    """Move an alias: the version is validated and loaded first, then the registry moves
    (compare-and-set with ``expected``), then traffic switches and the old version drains."""
    return await service.set_alias(
        adapter,
        alias,
        body.version,
        expected=body.expected,
        expected_given="expected" in body.model_fields_set,
        actor=body.actor,
        reason=body.reason,
    )


@router.post("/aliases/{adapter}/{alias}/rollback", response_model=AliasChange)
async def rollback(adapter: str, alias: str, service: Service) -> AliasChange:
    """Move the alias back to the version it held before its last move."""
    return await service.rollback_alias(adapter, alias, actor="admin-api")


@router.post("/reconcile")
async def reconcile(service: Service) -> dict[str, Any]:
    """Run a reconcile pass now (also retries versions refused earlier)."""
    return await service.reconcile()


@router.post("/adapters/import", response_model=VersionOut, status_code=201)
async def import_adapter(
    service: Service,
    name: Annotated[str, Form(description="Adapter name to register the files under.")],
    files: Annotated[list[UploadFile], File(description="adapter_config.json, weights, ...")],
) -> VersionOut:
    """Upload a PEFT LoRA folder trained elsewhere; validated, stored and registered."""
    contents: dict[str, bytes] = {}
    limit = service.settings.max_body_bytes * 16
    total = 0
    for upload in files:
        data = await upload.read()
        total += len(data)
        if total > limit:
            from shared.errors import ValidationError

            raise ValidationError(f"upload larger than {limit} bytes", param="files")
        contents[upload.filename or ""] = data
    return await service.import_upload(name, contents)
