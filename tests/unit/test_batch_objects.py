"""OpenAI's batch object and the output and error lines built from answers."""

from inference_allocator.bridge.batch_objects import (
    BatchObject,
    output_line,
    request_id,
    window_seconds,
)
from inference_allocator.schemas import ResponseRecord


def test_completion_windows_of_a_day_or_less():
    assert window_seconds("24h") == 86400
    assert window_seconds("90m") == 5400
    for bad in ("25h", "0h", "1d", "h", "24 h"):
        assert window_seconds(bad) is None


def test_a_batch_object_has_openais_fields():
    batch = BatchObject(
        id="batch_1", endpoint="/v1/chat/completions", input_file_id="file-1",
        completion_window="24h", status="validating", created_at=1,
    )  # fmt: skip
    shown = batch.model_dump()
    assert shown["object"] == "batch"
    assert shown["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert shown["output_file_id"] is None and shown["errors"] is None


def test_an_ok_answer_is_an_output_line_and_any_other_an_error_line():
    rid = request_id("batch_1", "q-7")
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    ok = ResponseRecord(request_id=rid, status="ok", output="Blue.", model_id="m", usage=usage)
    line = output_line("q-7", ok, "m", chat=True)
    assert line["custom_id"] == "q-7" and line["error"] is None
    assert line["response"]["status_code"] == 200
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "Blue."
    failed = ResponseRecord(request_id=rid, status="error", error="upstream said 500")
    line = output_line("q-7", failed, "m", chat=True)
    assert line["response"] is None
    assert line["error"] == {"code": "server_error", "message": "upstream said 500"}
    expired = ResponseRecord(request_id=rid, status="expired")
    assert output_line("q-7", expired, "m", chat=True)["error"]["code"] == "batch_expired"
