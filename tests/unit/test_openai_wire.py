"""The OpenAI wire format: priorities, bodies, results, chunks, errors."""

import pytest

from inference_allocator.bridge.openai_wire import (
    BadBody,
    ChatBody,
    CompletionBody,
    chunk,
    error,
    parse_body,
    priority_of,
    prompt_of,
    result,
    usage_of,
)
from inference_allocator.schemas import Priority, ResponseRecord


@pytest.mark.parametrize(
    ("body", "header", "level"),
    [
        (None, None, Priority.MEDIUM),
        ("high", None, Priority.HIGH),
        (" LOW ", None, Priority.LOW),
        (-3, None, Priority.HIGH),  # vLLM / LiteLLM: lower is more urgent
        (0, None, Priority.MEDIUM),
        (7, None, Priority.LOW),
        (None, "high", Priority.HIGH),
        (None, "-1", Priority.HIGH),
        ("low", "high", Priority.LOW),  # the body wins
    ],
)
def test_priorities_by_name_or_integer(body, header, level):
    assert priority_of(body, header) is level


def test_a_priority_that_is_neither_is_refused_naming_it():
    with pytest.raises(BadBody, match="urgent") as refused:
        priority_of("urgent", None)
    assert refused.value.param == "priority"


def test_bodies_pass_unknown_generation_parameters_through():
    body = parse_body(
        ChatBody,
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,'
        b' "top_k": 5, "priority": "high", "stream": true}',
    )
    assert body.params() == {"temperature": 0, "top_k": 5}
    with pytest.raises(BadBody) as missing:
        parse_body(CompletionBody, b'{"model": "m"}')
    assert missing.value.param == "prompt"
    with pytest.raises(BadBody, match="JSON"):
        parse_body(CompletionBody, b"not json")
    with pytest.raises(BadBody, match="n=1"):
        parse_body(CompletionBody, b'{"model": "m", "prompt": "p", "n": 3}')


def test_cached_tokens_go_where_openai_reports_them_and_user_keys_a_session():
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cached_tokens": 8}
    assert usage_of(usage) == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    assert usage_of({"prompt_tokens": 1}) == {"prompt_tokens": 1}
    assert usage_of(None) is None
    chat = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'
    body = parse_body(ChatBody, chat + b', "user": "alice"}')
    assert body.user() == "alice" and body.params() == {"user": "alice"}  # still sent on
    assert parse_body(ChatBody, chat + b"}").user() is None
    assert parse_body(ChatBody, chat + b', "user": 5}').user() is None


def test_messages_render_as_one_prompt():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt_of(messages) == "system: Be brief.\nuser: Hi"


def test_results_chunks_and_errors_have_openai_shapes():
    answer = ResponseRecord(
        request_id="r1", model_id="m", status="ok", output="hello", completed_at_ms=1_000_000,
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    )  # fmt: skip
    chat = result(answer, "m", chat=True)
    assert chat["id"] == "chatcmpl-r1" and chat["created"] == 1000
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert result(answer, "m", chat=False)["choices"][0]["text"] == "hello"
    first = chunk("r1", "m", True, 1, text="", role=True)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunk("r1", "m", True, 1, usage={"total_tokens": 2})
    assert usage["choices"] == [] and usage["usage"] == {"total_tokens": 2}
    assert error(503, "full")["error"]["type"] == "server_error"
    assert error(404, "no", code="model_not_found")["error"]["code"] == "model_not_found"
