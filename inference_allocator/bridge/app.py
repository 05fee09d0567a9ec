"""The bridge's FastAPI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response

from ..apikeys import KeyRing
from ..config import Settings
from .dashboard import router as dashboard
from .limits import BodySizeLimit
from .openai_routes import openai_http_error
from .openai_routes import router as openai_router
from .probes import router as probes
from .routes import router
from .shedding import Shedding
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
    secret = settings.api_keys.get_secret_value() if settings.api_keys else None
    app.state.api_keys = KeyRing.load(secret, settings.api_keys_file)  # refused bad ones
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(probes)
    app.include_router(dashboard)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        # 401/403 of the OpenAI routes in OpenAI's error shape, which its SDKs read
        if request.url.path.startswith("/v1/"):
            return openai_http_error(exc)
        return await http_exception_handler(request, exc)

    # Refusals before FastAPI parses anything; inside the size limit (the last added is
    # the outermost).
    app.add_middleware(
        Shedding,
        keys=app.state.api_keys,
        refusal=lambda: app.state.bridge.refusal(),
        count=lambda refused: app.state.bridge.count_rejected(refused),
        default_retry_after=settings.retry_after_seconds,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app
