"""A pool behind an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, Ollama), driven
with the official ``openai`` client: one ``AsyncOpenAI`` per pool, keep-alive connections,
the pool's timeout, no silent retries (a failure answers the request and the pool's health
check decides when the server is back), but one: a connection error before any text went
out is tried once more on a fresh connection.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from ..schemas import RequestRecord
from .backends import Completion, TextSink, UpstreamError, UpstreamUnreachable
from .capacity import ServerReport
from .spec import PoolSpec

log = logging.getLogger(__name__)

# Generation parameters the chat completions API names; any other passes through as-is.
_NAMED = {
    "max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
    "frequency_penalty", "n", "logit_bias", "user",
}  # fmt: skip
_USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens"}
#: what servers call the requests they run and the requests they queue, in ``/metrics``
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred")


class OpenAIBackend:
    """``infer`` sends the prompt as one user message of a chat completion."""

    accepts_params = True

    def __init__(self, spec: PoolSpec):
        assert spec.base_url is not None
        self.spec = spec
        self.client = AsyncOpenAI(
            base_url=spec.base_url,
            api_key=spec.api_key(),
            timeout=spec.timeout_seconds,
            max_retries=0,
        )

    @property
    def endpoint(self) -> str:
        return self.spec.base_url or ""

    async def infer(
        self, model_id: str, prompt: str, gpu_id: int, params: dict[str, Any] | None = None
    ) -> Completion:
        request = RequestRecord(model_id=model_id, prompt=prompt, params=params)
        return await self.run(request, gpu_id, None)

    async def run(
        self, request: RequestRecord, gpu_id: int, on_text: TextSink | None
    ) -> Completion:
        """The request's chat messages (or its prompt as one user message) to the chat
        completions API, or its prompt to the completions API (``api="completions"``);
        with ``on_text`` streamed, the text given there as it comes. Cancelling closes the
        connection to the server (which stops generating)."""
        params = request.params or {}
        named = {k: v for k, v in params.items() if k in _NAMED}
        extra = {k: v for k, v in params.items() if k not in _NAMED}
        priority = self.spec.engine_priority_of(request.priority)
        if priority is not None:  # the engine orders its own queue as we do
            extra["priority"] = priority
        options: dict[str, Any] = dict(model=request.model_id, extra_body=extra or None, **named)
        # Streamed from the server also when the client does not stream (the pool's
        # stream_upstream): a server notices a closed connection at its next token, so a
        # cancelled or preempted run frees the server's slot at once.
        streamed = on_text is not None or self.spec.stream_upstream
        if streamed:
            options.update(stream=True, stream_options={"include_usage": True})
        chat = request.api != "completions"
        given: list[str] = []  # text already given to ``on_text``

        async def give(text: str) -> None:
            given.append(text)
            await on_text(text)  # type: ignore[misc]

        for attempt in (1, 2):
            try:
                return await self._call(request, options, chat, streamed,
                                        give if on_text is not None else None)  # fmt: skip
            except openai.APITimeoutError as exc:
                raise UpstreamUnreachable(f"{self.endpoint} did not answer: {exc}") from None
            except openai.APIConnectionError as exc:
                # Once more on a fresh connection, before any text went out: a kept-alive
                # connection the server closed as it was reused fails this way, and says
                # nothing of the server. A server that is gone fails the second time too.
                if attempt == 2 or given:
                    raise UpstreamUnreachable(f"{self.endpoint} did not answer: {exc}") from None
                log.info("%s: %s; trying once more", self.endpoint, exc)
            except openai.APIStatusError as exc:
                raise UpstreamError(
                    f"{self.endpoint} answered {exc.status_code}: {_reason(exc)}"
                ) from None
            except openai.APIError as exc:  # an error event in the middle of a stream
                raise UpstreamError(f"{self.endpoint} failed mid-stream: {exc.message}") from None
        raise AssertionError("unreachable")

    async def _call(
        self,
        request: RequestRecord,
        options: dict[str, Any],
        chat: bool,
        streamed: bool,
        on_text: TextSink | None,
    ) -> Completion:
        if chat:
            messages = request.messages or [{"role": "user", "content": request.prompt}]
            call = self.client.chat.completions.create(messages=messages, **options)
        else:
            call = self.client.completions.create(prompt=request.prompt, **options)
        reply = await call
        if streamed:
            async with reply as stream:
                return await _streamed(stream, chat, on_text)
        choice = reply.choices[0]
        text = (choice.message.content if chat else choice.text) or ""
        return Completion(text, choice.finish_reason, _usage(reply.usage))

    async def server_report(self) -> ServerReport | None:
        """What the server says of its capacity (for ``slots = "auto"``): llama.cpp's
        ``/props`` (``total_slots``), else the running and waiting requests of its
        Prometheus ``/metrics`` (vLLM, SGLang, llama.cpp with ``--metrics``); None when it
        says neither (or does not answer)."""
        root = self.endpoint.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {self.spec.api_key()}"}
        async with httpx.AsyncClient(base_url=root, timeout=5.0, headers=headers) as http:
            try:
                props = await http.get("/props")
                if props.status_code == 200:
                    total = props.json().get("total_slots")
                    if isinstance(total, int) and total > 0:
                        return ServerReport(total_slots=total)
                metrics = await http.get("/metrics")
            except (httpx.HTTPError, ValueError):
                return None
        if metrics.status_code != 200:
            return None
        return _load_of(metrics.text)

    async def healthy(self) -> bool:
        """The server lists its models: it is up (``/v1/models``, which every
        OpenAI-compatible server has)."""
        try:
            await self.client.models.list(timeout=min(5.0, self.spec.timeout_seconds))
        except openai.OpenAIError:
            return False
        return True

    async def close(self) -> None:
        await self.client.close()


async def _streamed(stream: Any, chat: bool, on_text: TextSink | None) -> Completion:
    """Give each piece of text to ``on_text`` (if any) as it comes; the whole, as a
    completion."""
    pieces: list[str] = []
    finish_reason, usage = None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = _usage(chunk.usage)
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text = (choice.delta.content if chat else choice.text) or ""
        if text:
            pieces.append(text)
            if on_text is not None:
                await on_text(text)
        finish_reason = choice.finish_reason or finish_reason
    return Completion("".join(pieces), finish_reason, usage)


def _usage(usage: Any) -> dict[str, int] | None:
    """The token counts, and the prompt tokens the server found in its cache
    (``cached_tokens``, where it says: vLLM, SGLang, llama.cpp)."""
    if usage is None:
        return None
    counts: dict[str, int] = usage.model_dump(include=_USAGE_FIELDS)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    if isinstance(cached, int):
        counts["cached_tokens"] = cached
    return counts


def _reason(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message


def _load_of(exposition: str) -> ServerReport | None:
    """The requests running and waiting, summed over labels, from Prometheus text."""
    found: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                if sample.name in _RUNNING or sample.name in _WAITING:
                    found[sample.name] = found.get(sample.name, 0.0) + sample.value
    except ValueError:
        return None
    running = next((found[n] for n in _RUNNING if n in found), None)
    waiting = next((found[n] for n in _WAITING if n in found), None)
    if running is None or waiting is None:
        return None
    return ServerReport(running=int(running), waiting=int(waiting))
