"""Admin API: load, unload, pin, aliases, reconcile, upload. Mounted only when a key has the
admin scope; the alias history records the key's name as the actor."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from services.server.api.deps import AdminKey, Service, actor_name, admin_only
from services.server.declared_base import BaseStatement
from services.server.schemas import (
    AliasChange,
    AliasHistory,
    AliasRequest,
    LoadRequest,
    PinRequest,
    ProtectionOut,
    ProtectionRequest,
    ResidencyList,
    RollbackRequest,
    UnloadRequest,
    VersionOut,
)

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(admin_only)])


@router.post("/adapters/load", response_model=ResidencyList)
async def load(body: LoadRequest, service: Service) -> ResidencyList:
    """Validate and load a registered version now (evictable unless an alias or pin needs it)."""
    return await service.admin.load(body.model, body.engines)


@router.post("/adapters/unload", response_model=ResidencyList)
async def unload(body: UnloadRequest, service: Service) -> ResidencyList:
    """Unload a version after its in-flight requests finish (refused if an alias or pin needs it)."""
    return await service.admin.unload(body.model, body.engines)


@router.post("/adapters/pin")
async def pin(body: PinRequest, service: Service) -> dict[str, Any]:
    """Pin a version in the registry (every server keeps it loaded), then reconcile."""
    return await service.admin.pin(body.model, True)


@router.post("/adapters/unpin")
async def unpin(body: PinRequest, service: Service) -> dict[str, Any]:
    """Remove a pin, then reconcile (the version is unloaded unless an alias needs it)."""
    return await service.admin.pin(body.model, False)


@router.put("/aliases/{adapter}/{alias}", response_model=AliasChange)
async def set_alias(
    adapter: str, alias: str, body: AliasRequest, service: Service, key: AdminKey
) -> AliasChange:
    """Move an alias: the registry's move rules are checked, the version is validated and loaded,
    then the registry moves (compare-and-set with ``expected``), then traffic switches and the old
    version drains. A protected alias needs ``evaluation_run_id`` of a passing evaluation of this
    move under its policy (403 otherwise), or ``force`` with a ``reason``."""
    return await service.admin.set_alias(
        adapter,
        alias,
        body.version,
        expected=body.expected,
        expected_given="expected" in body.model_fields_set,
        actor=actor_name(key, body.actor),
        reason=body.reason,
        evaluation_run_id=body.evaluation_run_id,
        force=body.force,
    )


@router.post("/aliases/{adapter}/{alias}/rollback", response_model=AliasChange)
async def rollback(
    adapter: str, alias: str, service: Service, key: AdminKey, body: RollbackRequest | None = None
) -> AliasChange:
    """Move the alias back to the version it held before its last move (a protected alias needs
    a ``reason``; the rollback is recorded as forced)."""
    body = body or RollbackRequest()
    return await service.admin.rollback_alias(
        adapter, alias, actor=actor_name(key, body.actor), reason=body.reason
    )


@router.get("/aliases/{adapter}/{alias}/history", response_model=AliasHistory)
async def alias_history(adapter: str, alias: str, service: Service) -> AliasHistory:
    """The alias's protection and its moves, newest first: who, why, on which evidence, forced."""
    return await service.admin.alias_history(adapter, alias)


@router.put("/aliases/{adapter}/{alias}/protection", response_model=ProtectionOut)
async def protect(
    adapter: str, alias: str, body: ProtectionRequest, service: Service, key: AdminKey
) -> ProtectionOut:
    """Protect an alias with a registered gate policy (``NAME`` or ``NAME@VERSION``): from now on
    it moves only on passing evidence under that policy version's hash."""
    return await service.admin.protect_alias(
        adapter,
        alias,
        body.policy,
        first_baseline=body.first_baseline,
        actor=actor_name(key, body.actor),
        reason=body.reason,
    )


@router.delete("/aliases/{adapter}/{alias}/protection", response_model=ProtectionOut)
async def unprotect(
    adapter: str,
    alias: str,
    service: Service,
    reason: Annotated[str, Query(min_length=1, max_length=2000, description="Recorded.")],
    key: AdminKey,
    actor: Annotated[str, Query(max_length=128)] = "admin-api",
) -> ProtectionOut:
    """Lift an alias's protection (returns what it was); the reason is recorded."""
    return await service.admin.unprotect_alias(
        adapter, alias, actor=actor_name(key, actor), reason=reason
    )


@router.post("/reconcile")
async def reconcile(service: Service) -> dict[str, Any]:
    """Run a reconcile pass now (also retries versions refused earlier)."""
    return await service.admin.reconcile()


@router.post("/adapters/import", response_model=VersionOut, status_code=201)
async def import_adapter(
    service: Service,
    key: AdminKey,
    name: Annotated[str, Form(description="Adapter name to register the files under.")],
    files: Annotated[list[UploadFile], File(description="adapter_config.json, weights, ...")],
    declared_base_ok: Annotated[
        bool,
        Form(
            description="The base the adapter declares (base_model_name_or_path) is the served "
            "one under another name; needs a reason. Recorded in the version's lineage."
        ),
    ] = False,
    reason: Annotated[str, Form(max_length=2000, description="Why; recorded.")] = "",
    actor: Annotated[str, Form(max_length=128)] = "admin-api",
) -> VersionOut:
    """Upload a PEFT LoRA folder trained elsewhere; validated, stored and registered. An adapter
    that declares another base than the served one is refused (422) unless ``declared_base_ok``."""
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
    statement = BaseStatement(actor_name(key, actor), reason) if declared_base_ok else None
    return await service.admin.import_upload(name, contents, statement)
