"""OpenAI's batch object and the output and error lines built from answers."""

from inference_allocator.bridge.batch_book import BatchBook, BatchRecord
from inference_allocator.bridge.batch_objects import (
    BatchObject,
    new_batch,
    output_line,
    request_id,
    unrun_line,
    window_seconds,
)
from inference_allocator.config import Settings
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
    rid = request_id("batch_1", 7)
    assert rid == "batch_1.7"
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


def test_a_line_that_never_ran_says_why():
    line = unrun_line("batch_1.3", "q-3", "cancelled")
    assert line["error"]["code"] == "batch_cancelled" and line["response"] is None
    assert unrun_line("batch_1.3", "q-3", "expired")["error"]["code"] == "batch_expired"


def test_the_book_never_takes_a_batch_back_to_an_earlier_state_it_reads_later():
    book = BatchBook(Settings())
    seen: list[str] = []
    book.changed = seen.append
    batch = new_batch("batch_1", "file-1", "/v1/completions", "1h", 3600, None)
    first = BatchRecord(batch=batch, version=1)
    done = BatchRecord(batch=batch.model_copy(update={"status": "completed"}), version=2)
    book._apply(b"batch_1", done.model_dump_json().encode())
    book._apply(b"batch_1", first.model_dump_json().encode())  # written before, read after
    assert book.batches["batch_1"].batch.status == "completed"
    book._apply(b"batch_1/cancel", b"1700000000")
    assert book.cancelled_at == {"batch_1": 1700000000} and seen == ["batch_1", "batch_1"]
    # a cancel asked for shows until the batch is finished
    running = BatchRecord(batch=batch.model_copy(update={"status": "in_progress"}))
    assert book.view(running).status == "cancelling"
    assert book.view(book.batches["batch_1"]).status == "completed"
    book._apply(b"batch_1", None)
    assert "batch_1" not in book.batches
