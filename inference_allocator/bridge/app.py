"""The bridge's FastAPI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from ..config import Settings
from .routes import router
from .state import Bridge


def create_app(settings: Settings, bridge: Bridge | None = None) -> FastAPI:
    """A bridge app.

    Given a started ``bridge``, the app uses it and leaves stopping it to the caller;
    otherwise its lifespan starts one (and start-up fails when Kafka cannot be reached).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if bridge is not None:
            app.state.bridge = bridge
            yield
            return
        owned = Bridge(settings)
        await owned.start()
        app.state.bridge = owned
        try:
            yield
        finally:
            await owned.stop()

    app = FastAPI(title="Inference Allocator", version="0.1.0", lifespan=lifespan)
    app.include_router(router)

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_request_bytes:
            return JSONResponse(
                {
                    "detail": f"request body of {length} bytes exceeds the limit of "
                    f"{settings.max_request_bytes} (INFERENCE_MAX_REQUEST_BYTES)"
                },
                status_code=413,
            )
        response: Response = await call_next(request)
        return response

    return app
