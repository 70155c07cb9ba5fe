"""Dependencies shared by the route modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.server.auth import AccessScope
from services.server.service import ServerService
from shared.auth import Principal


def get_service(request: Request) -> ServerService:
    service: ServerService = request.app.state.service
    return service


Service = Annotated[ServerService, Depends(get_service)]


def inference_scope(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> AccessScope:
    return service.access.listing_scope(authorization)


def admin_only(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return service.access.check_admin(authorization)


def actor_name(principal: Principal, claimed: str) -> str:
    """Who the history records: the key's name, never only what the body says; a body's
    ``actor`` (a person behind a shared key) is kept next to it."""
    if claimed and claimed not in ("admin-api", principal.name):
        return f"{principal.name} ({claimed})"[:128]
    return principal.name


AdminKey = Annotated[Principal, Depends(admin_only)]


InferenceScope = Annotated[AccessScope, Depends(inference_scope)]
