"""Who is calling: API key authentication, roles, and the reusable role/ownership checks.

A missing, unknown or revoked key is 401; a role calling what it may never call is 403;
another subject's object is 404 (``check_owner``), so ids do not leak.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.requests import HTTPConnection

from micropay.api.authenticator import Principal
from micropay.api.routing import reject_unknown_query
from micropay.api.services import get_services
from micropay.api.settings import Role
from micropay.errors import ApiError, PermissionDenied

__all__ = [
    "Admin",
    "Principal",
    "PrincipalDependency",
    "RoleCheck",
    "authorize",
    "bearer_key",
    "bearer_scheme",
    "check_owner",
    "require_roles",
]

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key: `Authorization: Bearer <key>`. `micropay keys create --role admin` makes the first.",
)


PrincipalDependency = Callable[..., Coroutine[Any, Any, Principal]]


def bearer_key(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header, read exactly as ``bearer_scheme`` reads it."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


async def authorize(connection: HTTPConnection, key: str | None, roles: frozenset[Role]) -> Principal:
    """Authenticate ``key`` (401), spend a rate-limit token (429), allow only ``roles`` (403),
    then refuse unknown query parameters (400): in that order, so nothing about a route's
    parameters answers before the caller is known."""
    services = get_services(connection)
    principal = await services.authenticator.authenticate(key)
    services.rate_limiter.check(principal.key_id, services.settings.rate_limit(principal.role))
    if principal.role not in roles:
        raise PermissionDenied("role_not_allowed", f"A {principal.role} API key may not call this endpoint.")
    reject_unknown_query(connection)
    return principal


class RoleCheck:
    """The dependency ``require_roles`` makes: the caller's principal, if its role is allowed."""

    def __init__(self, roles: frozenset[Role]) -> None:
        self.roles = roles

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> Principal:
        return await authorize(request, None if credentials is None else credentials.credentials, self.roles)


def require_roles(*roles: Role) -> PrincipalDependency:
    """A dependency: authenticate (401), spend a rate-limit token (429), allow only ``roles``
    (403), then refuse unknown query parameters (400) (see ``authorize``).

    Use it as ``Annotated[Principal, Depends(require_roles("admin", "merchant"))]``.
    """
    return RoleCheck(frozenset(roles))


def check_owner(principal: Principal, owner_subject_id: str | None, not_found: ApiError) -> None:
    """Let admin and the owning subject through; anyone else gets ``not_found`` (ids do not leak)."""
    if principal.is_admin:
        return
    if owner_subject_id is None or principal.subject_id != owner_subject_id:
        raise not_found


Admin = Annotated[Principal, Depends(require_roles("admin"))]
"""A route parameter that admits only admin keys."""
