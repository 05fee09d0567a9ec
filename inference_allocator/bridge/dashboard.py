"""The live dashboard at ``/``: plain HTML and JavaScript (no build step), updated once a
second over server-sent events from ``/dashboard/events``.

What it shows comes from what the bridge reads anyway (the slot table, the backlog, the
answers), and from ``<prefix>.stats`` (the statistics agent's windows), which a bridge
reads only while somebody looks at the dashboard.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from ..apikeys import KeyRing
from .auth import presented_key
from .deps import BridgeDep

router = APIRouter()

#: how often an open dashboard gets a new picture
INTERVAL_S = 1.0


def _allowed(request: Request) -> None:
    """With API keys, the dashboard needs one too: a header, or ``?key=`` (a browser's
    EventSource cannot send headers)."""
    keys: KeyRing = request.app.state.api_keys
    presented = presented_key(request.headers) or request.query_params.get("key")
    if keys and keys.identify(presented) is None:
        raise HTTPException(401, "the dashboard needs an API key: open /?key=<key>")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    _allowed(request)
    page = resources.files(__package__).joinpath("static/dashboard.html").read_text()
    return HTMLResponse(page)


@router.get("/dashboard/events", include_in_schema=False)
async def events(request: Request, bridge: BridgeDep) -> StreamingResponse:
    _allowed(request)
    board = bridge.dashboard
    await board.watch()

    async def pictures() -> AsyncIterator[bytes]:
        try:
            while True:
                yield f"data: {json.dumps(board.picture())}\n\n".encode()
                await asyncio.sleep(INTERVAL_S)
        finally:
            board.unwatch()

    return StreamingResponse(
        pictures(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
