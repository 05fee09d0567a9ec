"""Which requests the bridge's fast path serves itself, and which it leaves to the route."""

from inference_allocator.bridge.fast_path import _plain


def headers(**named: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in named.items()]


def test_a_json_body_of_declared_length_without_route_headers_is_plain():
    found = _plain(headers(content_type="application/json; charset=utf-8", content_length="9",
                           authorization="Bearer k"))  # fmt: skip
    assert found is not None and found["authorization"] == "Bearer k"
    assert _plain(headers(content_type="Application/JSON", content_length="2")) is not None


def test_what_the_route_must_read_or_refuse_goes_to_the_route():
    json = {"content_type": "application/json", "content_length": "9"}
    for header in ("prefer", "idempotency_key", "x_session_id", "x_tenant"):
        assert _plain(headers(**json, **{header: "x"})) is None, header
    assert _plain(headers(content_type="application/json")) is None  # chunked
    assert _plain(headers(content_length="9")) is None  # no content type: FastAPI's call
    assert _plain(headers(content_type="application/x-www-form-urlencoded",
                          content_length="9")) is None  # fmt: skip
    assert _plain(headers(content_type="application/vnd+json", content_length="9")) is None
