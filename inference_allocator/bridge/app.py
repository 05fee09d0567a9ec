"""The bridge's FastAPI application factory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..apikeys import KeyRing
from ..config import Settings
from .bridge import Bridge
from .dashboard import router as dashboard
from .fast_path import FastInference
from .limits import BodySizeLimit
from .openai_batches import router as batches_router
from .openai_files import router as files_router
from .openai_routes import openai_http_error, openai_invalid
from .openai_routes import router as openai_router
from .probes import router as probes
from .routes import router
from .shedding import Shedding


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
    app.include_router(files_router)
    app.include_router(batches_router)
    app.include_router(probes)
    app.include_router(dashboard)

    # Starlette's class: FastAPI raises it for a body it cannot parse, and its subclass
    # (fastapi.HTTPException) for 401/403.
    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        # 401/403 of the OpenAI routes in OpenAI's error shape, which its SDKs read
        if request.url.path.startswith("/v1/"):
            answer = openai_http_error(exc)
            if exc.status_code == 405:
                answer.headers["Allow"] = ", ".join(_allowed(app, request.scope))
            return answer
        if exc.status_code == 405:
            allow = ", ".join(_allowed(app, request.scope))
            return JSONResponse({"detail": exc.detail}, 405, headers={"Allow": allow})
        if exc.status_code == 400 and exc.detail == _UNPARSED:
            # FastAPI's 400 for a JSON body it cannot even decode (not UTF-8): a bad body,
            # answered like every other bad body of this surface
            return _invalid_body("the body is not JSON (not UTF-8 text)")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/v1/"):  # a header FastAPI checked: OpenAI's 400
            return openai_invalid(exc)
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and any(
            tuple(error.get("loc", ())) == ("body",) for error in exc.errors()
        ):
            # curl -d sends a form's content type: FastAPI then validates the raw bytes,
            # and its message would not say what is missing
            return _invalid_body(
                f"the body must be a JSON object sent with Content-Type: application/json "
                f"(it came as {content_type or 'no content type'!r})"
            )
        return await request_validation_exception_handler(request, exc)

    # Plain inference requests without FastAPI's per-request machinery; inside the
    # refusals and the size limit (the last added is the outermost).
    app.add_middleware(FastInference, keys=app.state.api_keys)
    # Refusals before FastAPI parses anything; inside the size limit.
    app.add_middleware(
        Shedding,
        keys=app.state.api_keys,
        refusal=lambda: app.state.bridge.refusal(),
        count=lambda refused: app.state.bridge.count_rejected(refused),
        default_retry_after=settings.retry_after_seconds,
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        larger={"/v1/files": (settings.max_file_bytes, "INFERENCE_MAX_FILE_BYTES")},
    )
    app.openapi = lambda: _served_schema(app, settings)  # type: ignore[method-assign]
    return app


def _served_schema(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI schema, with the limits this bridge's settings set (a deadline longer
    than INFERENCE_REQUEST_TIMEOUT_SECONDS is refused), so that the schema served is the
    contract served."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        timeout = schema["components"]["schemas"]["InferenceRequest"]["properties"][
            "timeout_seconds"
        ]
        for option in timeout.get("anyOf", [timeout]):
            if option.get("type") == "number":
                option["maximum"] = settings.request_timeout_seconds
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path.startswith("/v1/"):
                    # FastAPI documents its validation 422 for every route with a body; the
                    # OpenAI API answers a bad body 400 in OpenAI's error shape instead.
                    operation.get("responses", {}).pop("422", None)
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "header":  # absent or a string, never JSON null
                        options = parameter["schema"].get("anyOf", [])
                        strings = [o for o in options if o.get("type") != "null"]
                        if len(strings) == 1:
                            parameter["schema"] = {**parameter["schema"], **strings[0]}
                            del parameter["schema"]["anyOf"]
        app.openapi_schema = schema
    return app.openapi_schema


def _allowed(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first
    route's when several share a path)."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(scope["path"]):
            methods |= route.methods or set()
    return sorted(methods)


#: FastAPI's detail when it cannot parse a body at all
_UNPARSED = "There was an error parsing the body"


def _invalid_body(message: str) -> JSONResponse:
    """422 in FastAPI's own validation-error shape, as for every other bad body."""
    return JSONResponse(
        {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": message, "input": None}]},
        status_code=422,
    )
