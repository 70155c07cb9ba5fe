"""Dependencies shared by the route modules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from services.server.auth import Scope
from services.server.service import ServerService


def get_service(request: Request) -> ServerService:
    service: ServerService = request.app.state.service
    return service


Service = Annotated[ServerService, Depends(get_service)]


def inference_scope(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> Scope:
    return service.access.listing_scope(authorization)


def admin_only(service: Service, authorization: Annotated[str | None, Header()] = None) -> None:
    service.access.check_admin(authorization)


InferenceScope = Annotated[Scope, Depends(inference_scope)]
