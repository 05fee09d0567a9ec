"""API-key checks of the bridge's routes (only when keys are configured).

A key comes as ``Authorization: Bearer KEY`` (what OpenAI clients send) or ``X-API-Key:
KEY``. Missing or unknown: 401 with ``WWW-Authenticate: Bearer``; known but asking for a
priority above the key's ceiling: 403. The probes (``/healthz``, ``/readyz``) stay open.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from ..apikeys import Caller, KeyRing
from ..schemas import SESSION_HEADER_PATTERN, TENANT_MAX, Priority


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key in ``headers`` (names in lower case), if any."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return headers.get("x-api-key")


async def authenticate(request: Request) -> Caller | None:
    """The caller, or None when the bridge has no keys; 401 without a valid key."""
    keys: KeyRing = request.app.state.api_keys
    if not keys:
        return None
    caller = keys.identify(presented_key(request.headers))
    if caller is None:
        raise HTTPException(
            401,
            "missing or unknown API key: send `Authorization: Bearer <key>` or `X-API-Key`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


def default_priority(caller: Caller | None, priority: Priority, named: bool) -> Priority:
    """The level of a request that ``named`` none (``priority`` is then the default,
    medium) is at most its key's ceiling: a key limited to low gets low, not a 403."""
    if named or caller is None or caller.allows(priority):
        return priority
    return caller.max_priority


def require_priority(caller: Caller | None, priority: Priority) -> None:
    """403 when the caller's key may not use ``priority``."""
    if caller is not None and not caller.allows(priority):
        raise HTTPException(
            403,
            f"the API key {caller.name!r} may use priority {caller.max_priority} at most, "
            f"not {priority}",
        )


#: OpenAPI answers of these checks, for the routers (401) and the routes that take a
#: priority (403)
UNAUTHORIZED = {401: {"description": "API keys are configured and none valid was sent"}}
ABOVE_CEILING = {403: {"description": "the priority is above the API key's ceiling"}}

CallerDep = Annotated[Caller | None, Depends(authenticate)]

#: ``X-Tenant``: who a request is for, where no API key says it
TenantHeader = Annotated[
    str | None, Header(min_length=1, max_length=TENANT_MAX, pattern=SESSION_HEADER_PATTERN)
]


def tenant_of(caller: Caller | None, x_tenant: str | None, user: str | None = None) -> str | None:
    """A request's tenant (for fair shares, budgets, metrics): its API key's name when keys
    are configured (a header cannot claim another's share); else the ``X-Tenant`` header,
    else the OpenAI body's ``user``; None: the default tenant."""
    if caller is not None:
        return caller.name
    return x_tenant or (user[:TENANT_MAX] if user else None)
