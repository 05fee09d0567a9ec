"""Decoding fetched records: ids for hand-written records, reasons for bad ones."""

import json

from aiokafka.structs import ConsumerRecord

from inference_allocator.decoding import Undecodable, decode_request
from inference_allocator.schemas import Priority, RequestRecord


def record(value: bytes | None, key: bytes | None = None, offset: int = 7) -> ConsumerRecord:
    return ConsumerRecord(
        topic="x.requests.high",
        partition=2,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def test_full_request_keeps_its_id_and_takes_the_topics_priority():
    value = json.dumps({"request_id": "r1", "model_id": "m", "prompt": "p", "priority": "low"})
    decoded = decode_request(record(value.encode(), b"other"), Priority.HIGH)
    assert isinstance(decoded, RequestRecord)
    assert decoded.request_id == "r1" and decoded.priority == Priority.HIGH


def test_missing_id_takes_the_key_else_a_stable_derived_id():
    value = b'{"model_id": "m", "prompt": "p"}'
    assert decode_request(record(value, b"k9"), Priority.HIGH).request_id == "k9"
    first = decode_request(record(value), Priority.HIGH)
    again = decode_request(record(value), Priority.HIGH)
    assert first.request_id == again.request_id == "x.requests.high-2-7"


def test_unknown_fields_are_ignored_so_the_schema_can_grow():
    value = b'{"model_id": "m", "prompt": "p", "tenant": "a", "max_tokens": 5}'
    assert isinstance(decode_request(record(value), Priority.LOW), RequestRecord)


def test_invalid_json_is_undecodable_with_the_key_as_id():
    decoded = decode_request(record(b"{not json", b"k1"), Priority.LOW)
    assert isinstance(decoded, Undecodable)
    assert decoded.reason.startswith("not valid JSON") and decoded.request_id == "k1"


def test_invalid_request_names_the_field_and_salvages_the_id():
    decoded = decode_request(record(b'{"request_id": "r2", "prompt": "p"}'), Priority.LOW)
    assert isinstance(decoded, Undecodable)
    assert "model_id" in decoded.reason and decoded.request_id == "r2"


def test_no_known_id_means_nobody_to_answer():
    decoded = decode_request(record(b"[1, 2]"), Priority.LOW)
    assert isinstance(decoded, Undecodable) and decoded.request_id is None
    assert decode_request(record(None), Priority.LOW).reason.startswith("empty value")
