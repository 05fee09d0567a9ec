"""A batch's input file checked before anything runs: every problem, each with its line, in
OpenAI's error shape."""

import json

from inference_allocator.bridge.batch_lines import MAX_ERRORS, read_lines

CHAT = "/v1/chat/completions"


def line(custom_id="a", url=CHAT, model="m", **extra) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body,
                       **extra})  # fmt: skip


def serves(model: str) -> bool:
    return model == "m"


def test_good_lines_become_requests_in_order():
    content = "\n".join(line(f"c{i}") for i in range(3)).encode() + b"\n\n"
    lines, errors = read_lines(content, CHAT, serves)
    assert errors == []
    assert [(b.custom_id, b.line) for b in lines] == [("c0", 1), ("c1", 2), ("c2", 3)]
    assert lines[0].body.model == "m"


def test_every_bad_line_is_reported_with_its_line_and_nothing_runs():
    content = "\n".join(
        [
            line("ok"),
            "not json",
            "[1]",
            json.dumps({"url": CHAT, "body": {}}),
            line("ok"),
            line("b", method="GET"),
            line("c", url="/v1/embeddings"),
            line("d", model="unknown"),
            json.dumps({"custom_id": "e", "method": "POST", "url": CHAT, "body": {"model": "m"}}),
        ]
    ).encode()
    lines, errors = read_lines(content, CHAT, serves)
    assert lines == []
    assert [(e.code, e.line) for e in errors] == [
        ("invalid_json_line", 2),
        ("invalid_json_line", 3),
        ("missing_custom_id", 4),
        ("duplicate_custom_id", 5),
        ("invalid_method", 6),
        ("mismatched_url", 7),
        ("model_not_found", 8),
        ("invalid_body", 9),
    ]
    assert errors[3].openai() == {
        "code": "duplicate_custom_id",
        "message": "line 5: custom_id 'ok' is on line 1 too",
        "param": "custom_id",
        "line": 5,
    }


def test_the_endpoint_and_the_file_itself_are_checked():
    assert read_lines(b"", "/v1/embeddings", serves)[1][0].code == "invalid_endpoint"
    assert read_lines(b"\xff", CHAT, serves)[1][0].code == "invalid_file"
    assert read_lines(b"\n\n", CHAT, serves)[1][0].code == "empty_file"
    completions = json.dumps({"custom_id": "p", "method": "POST", "url": "/v1/completions",
                              "body": {"model": "m", "prompt": "Say hi"}})  # fmt: skip
    lines, errors = read_lines(completions.encode(), "/v1/completions", serves)
    assert errors == [] and lines[0].body.prompt == "Say hi"  # type: ignore[union-attr]


def test_a_file_of_many_bad_lines_reports_a_bounded_list():
    content = "\n".join("nope" for _ in range(MAX_ERRORS + 50)).encode()
    _, errors = read_lines(content, CHAT, serves)
    assert len(errors) == MAX_ERRORS
    assert errors[-1].code == "too_many_errors" and "51 more" in errors[-1].message


def test_a_body_is_checked_as_v1_checks_it_and_may_not_stream():
    bad_n = line("a", n=1).replace('"messages"', '"n": 3, "messages"')
    streams = line("b").replace('"messages"', '"stream": true, "messages"')
    no_messages = json.dumps({"custom_id": "c", "url": CHAT, "body": {"model": "m"}})
    _, errors = read_lines("\n".join([bad_n, streams, no_messages]).encode(), CHAT, serves)
    assert [(e.code, e.param) for e in errors] == [
        ("invalid_body", "body.n"),
        ("invalid_body", "body.stream"),
        ("invalid_body", "body.messages"),
    ]
