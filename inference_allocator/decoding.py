"""Turning a fetched record into a request, or into the reason it cannot be one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from .schemas import Priority, RequestRecord


@dataclass(slots=True)
class Undecodable:
    """A record that is not a valid request.

    ``request_id`` is set when the sender named one (in the value or as the key), so that
    somebody may be waiting for an error response.
    """

    reason: str
    request_id: str | None


def derived_request_id(topic: str, partition: int, offset: int) -> str:
    """A stable id for a record without one, so a redelivery does not mint a new id."""
    return f"{topic}-{partition}-{offset}"


def decode_request(record: ConsumerRecord, priority: Priority) -> RequestRecord | Undecodable:
    """Validate a record's JSON value; the topic decides its priority.

    The request id is, in order: the value's ``request_id``, the record key, an id derived
    from topic/partition/offset.
    """
    key = _text(record.key)
    fallback_id = key or derived_request_id(record.topic, record.partition, record.offset)
    if record.value is None:
        return Undecodable("empty value (tombstone)", key)
    try:
        request = RequestRecord.model_validate_json(record.value)
    except ValidationError as exc:
        return Undecodable(_describe(exc), salvage_id(record.value) or key)
    request.request_id = request.request_id or fallback_id
    request.priority = priority
    return request


def _text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] in ("json_invalid", "json_type"):
        return f"not valid JSON: {errors[0]['msg']}"
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors]
    return "not a valid request: " + "; ".join(parts)


def salvage_id(raw: bytes) -> str | None:
    """The request_id of a JSON object that failed validation elsewhere, if it has one."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    request_id = value.get("request_id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, str) and request_id else None
