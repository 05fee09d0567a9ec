"""OpenAI's Files API: ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``,
``GET /v1/files/{file_id}``, ``GET /v1/files/{file_id}/content``,
``DELETE /v1/files/{file_id}``, in OpenAI's shapes, so the official client's ``files``
calls work. The files are kept on Kafka (``files.py``): any bridge serves any of them.

A batch input file is checked as it is uploaded: UTF-8 JSON Lines, one JSON object a line,
at most ``INFERENCE_MAX_FILE_LINES`` lines; what the lines ask for is checked when a batch
is created from it. With API keys, a key sees the files it uploaded.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from .auth import UNAUTHORIZED, CallerDep, authenticate
from .deps import BridgeDep
from .files import StoredFile
from .openai_wire import error, page

router = APIRouter(
    prefix="/v1", dependencies=[Depends(authenticate)], responses=UNAUTHORIZED, tags=["files"]
)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error(status, message, param=param), status_code=status)


def _not_found(file_id: str) -> JSONResponse:
    return _error(404, f"no file {file_id!r}", "file_id")


#: where a file's id leads (OpenAPI links, which clients and schemathesis's stateful runs
#: follow)
_BY_ID = {
    name: {"operationId": name, "parameters": {"file_id": "$response.body#/id"}}
    for name in ("retrieve_file", "file_content", "delete_file")
}


@router.post(
    "/files",
    operation_id="create_file",
    responses={
        200: {"description": "the file object", "links": _BY_ID},
        400: {"description": "a purpose other than batch, or not JSON Lines"},
        413: {"description": "larger than INFERENCE_MAX_FILE_BYTES"},
        503: {"description": "broker unreachable"},
    },
)
async def create_file(
    bridge: BridgeDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="a JSON Lines file of requests")],
    purpose: Annotated[Literal["batch"], Form(description="what the file is for: batch")],
) -> Response:
    """Upload a file (``purpose=batch``: what OpenAI keeps for fine-tuning and assistants has
    no use in front of a model server): stored on Kafka, answered with its file object."""
    content = await file.read()
    limit = bridge.settings.max_file_bytes
    if len(content) > limit:
        return _error(413, f"the file has {len(content)} bytes, above {limit}", "file")
    lines, problem = _check_jsonl(content, bridge.settings.max_file_lines)
    if problem:
        return _error(400, problem, "file")
    stored = await bridge.files.create(
        file.filename or "upload.jsonl", purpose, content, caller.name if caller else None, lines
    )
    return JSONResponse(stored.model_dump())


def _check_jsonl(content: bytes, max_lines: int) -> tuple[int, str | None]:
    """(lines, None) for JSON Lines of objects within the limit; else (0, the problem)."""
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return 0, "the file is not UTF-8 text"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return 0, "the file has no lines"
    if len(lines) > max_lines:
        return 0, f"the file has {len(lines)} lines, above {max_lines} (INFERENCE_MAX_FILE_LINES)"
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value: Any = json.loads(line)
        except ValueError:
            return 0, f"line {number} is not JSON"
        if not isinstance(value, dict):
            return 0, f"line {number} is not a JSON object"
    return len(lines), None


@router.get("/files", operation_id="list_files")
async def list_files(bridge: BridgeDep, caller: CallerDep, purpose: str | None = None) -> Response:
    """The files this key (without keys: anybody) uploaded, newest first."""
    files = [
        stored.file.model_dump()
        for stored in bridge.files.visible(caller.name if caller else None)
        if purpose is None or stored.file.purpose == purpose
    ]
    return JSONResponse(page(files))


def _stored(bridge: Any, caller: Any, file_id: str) -> StoredFile | None:
    return bridge.files.get(file_id, caller.name if caller else None)


@router.get(
    "/files/{file_id}",
    operation_id="retrieve_file",
    responses={404: {"description": "no such file"}},
)
async def retrieve_file(bridge: BridgeDep, caller: CallerDep, file_id: str) -> Response:
    stored = _stored(bridge, caller, file_id)
    return _not_found(file_id) if stored is None else JSONResponse(stored.file.model_dump())


@router.get(
    "/files/{file_id}/content",
    operation_id="file_content",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        404: {"description": "no such file"},
    },
)
async def file_content(bridge: BridgeDep, caller: CallerDep, file_id: str) -> Response:
    stored = _stored(bridge, caller, file_id)
    if stored is None:
        return _not_found(file_id)
    try:
        content = await bridge.files.content(stored)
    except LookupError as exc:
        return _error(404, str(exc), "file_id")
    return Response(content, media_type="application/octet-stream")


@router.delete(
    "/files/{file_id}",
    operation_id="delete_file",
    responses={404: {"description": "no such file"}},
)
async def delete_file(bridge: BridgeDep, caller: CallerDep, file_id: str) -> Response:
    stored = _stored(bridge, caller, file_id)
    if stored is None:
        return _not_found(file_id)
    await bridge.files.delete(stored)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
