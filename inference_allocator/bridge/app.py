"""The bridge's FastAPI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from ..config import Settings
from .limits import BodySizeLimit
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app
