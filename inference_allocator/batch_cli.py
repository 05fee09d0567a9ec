"""``inference-allocator batch``: submit a JSONL file of requests as a batch and follow it,
see a batch's status, fetch its results, cancel it. It talks to a bridge over HTTP with
the official ``openai`` client (the Files and Batch APIs), as any OpenAI program would."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

#: statuses after which a batch does not change
FINAL = ("completed", "failed", "expired", "cancelled")
#: how often ``--wait`` looks
POLL_S = 0.5


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "batch",
        help="the Batch API from the command line: submit, status, results, cancel",
        description="Submit a JSON Lines file of requests as a batch (OpenAI's Batch API, "
        "run at low priority by the fleet), follow it, fetch its results, cancel it. Talks "
        "to a bridge: --url (default INFERENCE_BRIDGE_URL, else http://127.0.0.1:8000) with "
        "--api-key (default INFERENCE_API_KEY or OPENAI_API_KEY, when keys are on).",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("INFERENCE_BRIDGE_URL", "http://127.0.0.1:8000"),
        help="the bridge (default: INFERENCE_BRIDGE_URL, else %(default)s)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("INFERENCE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none",
        help="the API key, when the bridge has keys (default: INFERENCE_API_KEY, else "
        "OPENAI_API_KEY)",
    )
    actions = p.add_subparsers(
        dest="action", required=True, metavar="ACTION", help="submit, status, results, cancel"
    )
    submit = actions.add_parser("submit", help="upload FILE and create a batch of its lines")
    submit.add_argument("file", type=Path, help="JSON Lines: custom_id, method, url, body")
    submit.add_argument(
        "--endpoint",
        help="/v1/chat/completions or /v1/completions (default: the first line's url)",
    )
    submit.add_argument("--window", default="24h", help="completion window (default: 24h)")
    submit.add_argument("--priority", help="the lines' level (default: low)")
    submit.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    submit.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    status = actions.add_parser("status", help="a batch's status and counts (JSON)")
    status.add_argument("batch_id")
    results = actions.add_parser("results", help="write a batch's output (and error) lines")
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", type=Path, required=True, help="the output lines")
    results.add_argument("--errors", type=Path, help="the error lines (default: not written)")
    cancel = actions.add_parser("cancel", help="cancel a batch (it keeps what finished)")
    cancel.add_argument("batch_id")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    import openai

    for name in ("openai", "httpx"):  # their retries and requests are not this command's news
        logging.getLogger(name).setLevel(logging.WARNING)

    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.api_key)
    try:
        return {"submit": _submit, "status": _status, "results": _results, "cancel": _cancel}[
            args.action
        ](client, args)
    except openai.APIConnectionError:
        print(f"error: no bridge answers at {args.url} (--url)", file=sys.stderr)
        return 1
    except openai.APIStatusError as exc:
        print(f"error: {exc.status_code}: {_message(exc)}", file=sys.stderr)
        return 1


def _message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)


def _submit(client: Any, args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        content = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    endpoint = args.endpoint or _first_url(content)
    if endpoint is None:
        print(f"error: {path}: no --endpoint, and its first line names no url", file=sys.stderr)
        return 2
    metadata = {}
    for pair in args.metadata:
        key, sep, value = pair.partition("=")
        if not sep:
            print(f"error: --metadata {pair!r}: KEY=VALUE", file=sys.stderr)
            return 2
        metadata[key] = value
    uploaded = client.files.create(file=(path.name, content), purpose="batch")
    extra = {"priority": args.priority} if args.priority else None
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,
        completion_window=args.window,
        metadata=metadata or None,
        extra_body=extra,
    )
    if not args.wait:
        print(batch.model_dump_json(indent=2))
        return 0
    batch = _follow(client, batch)
    print(batch.model_dump_json(indent=2))
    return 0 if batch.status == "completed" else 1


def _first_url(content: bytes) -> str | None:
    for line in content.decode(errors="replace").splitlines():
        if line.strip():
            try:
                url = json.loads(line).get("url")
            except (ValueError, AttributeError):
                return None
            return url if isinstance(url, str) else None
    return None


def _follow(client: Any, batch: Any) -> Any:
    """Until the batch is finished, with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(batch.status, total=None)
        while batch.status not in FINAL:
            time.sleep(POLL_S)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            progress.update(
                task, description=batch.status, completed=done, total=counts.total or None
            )
        progress.update(task, description=batch.status)
    return batch


def _status(client: Any, args: argparse.Namespace) -> int:
    print(client.batches.retrieve(args.batch_id).model_dump_json(indent=2))
    return 0


def _results(client: Any, args: argparse.Namespace) -> int:
    batch = client.batches.retrieve(args.batch_id)
    if batch.status not in FINAL:
        print(f"error: batch {batch.id} is {batch.status}: no results yet", file=sys.stderr)
        return 1
    written = []
    for file_id, path in ((batch.output_file_id, args.output), (batch.error_file_id, args.errors)):
        if path is None:
            continue
        content = client.files.content(file_id).content if file_id else b""
        path.write_bytes(content)
        lines = content.count(b"\n")
        written.append(f"{path}: {lines} lines")
    counts = batch.request_counts
    print(f"batch {batch.id} {batch.status}: {counts.completed} ok, {counts.failed} failed; "
          + "; ".join(written))  # fmt: skip
    return 0


def _cancel(client: Any, args: argparse.Namespace) -> int:
    print(client.batches.cancel(args.batch_id).model_dump_json(indent=2))
    return 0
