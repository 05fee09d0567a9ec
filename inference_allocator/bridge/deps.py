"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .bridge import Bridge


async def get_bridge(request: Request) -> Bridge:
    # async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
    # hop per request that cost several times the bridge's own work under load.
    return request.app.state.bridge


BridgeDep = Annotated[Bridge, Depends(get_bridge)]
