"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .state import Bridge


def get_bridge(request: Request) -> Bridge:
    return request.app.state.bridge


BridgeDep = Annotated[Bridge, Depends(get_bridge)]
