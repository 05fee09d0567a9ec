"""EventData: the data of server-sent events, line by line."""

from inference_allocator.fleet.sse import EventData


def _events(body: bytes) -> list[str]:
    events = EventData()
    found = [data for line in body.splitlines(keepends=True) if (data := events.feed(line))]
    last = events.end()
    return found + ([last] if last is not None else [])


def test_each_blank_line_ends_an_event_and_its_data_lines_join():
    body = b'data: {"a": 1}\n\ndata:first\ndata: second\n\n'
    assert _events(body) == ['{"a": 1}', "first\nsecond"]


def test_names_ids_comments_and_crlf_are_read_past():
    body = b": keep-alive\r\n\r\nevent: chunk\r\nid: 7\r\ndata: x\r\n\r\nretry: 10\r\n\r\n"
    assert _events(body) == ["x"]


def test_a_body_that_ends_without_a_blank_line_still_gives_its_last_event():
    assert _events(b"data: [DONE]") == ["[DONE]"]
    assert _events(b"") == []
