"""A pool behind an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, Ollama): its
chat completions and completions APIs, whole or streamed, over one aiohttp session per
pool: keep-alive connections, the pool's timeout for each connect and each read, no silent
retries (a failure answers the request and the pool's health check decides when the server
is back), but one: a connection error before any text went out is tried once more on a
fresh connection.

Why aiohttp and not the official ``openai`` client: the call is on every request's path,
and the client spent several times aiohttp's CPU per call in the worker, where it delayed
the dispatch and the Kafka clients sharing the loop (BENCHMARKS.md has the measurement).
What the client gave here (the request body, the error's message, the streamed chunks) is
the wire format, read below as the servers send it.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..schemas import RequestRecord
from .backends import Completion, TextSink, UpstreamError, UpstreamUnreachable
from .capacity import ServerReport
from .spec import PoolSpec
from .sse import EventData

log = logging.getLogger(__name__)

_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
#: what servers call the requests they run and the requests they queue, in ``/metrics``
_RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing")
_WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred")
#: the longest line of a streamed answer (one event's data)
_LINE_MAX = 1 << 22
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


class OpenAIBackend:
    """``infer`` sends the prompt as one user message of a chat completion."""

    accepts_params = True

    def __init__(self, spec: PoolSpec):
        assert spec.base_url is not None
        self.spec = spec
        self._base = spec.base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {spec.api_key()}"}
        # Per connect and per read, not for the whole call: a long generation streams for
        # as long as it keeps sending.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=spec.timeout_seconds, sock_read=spec.timeout_seconds
        )
        self._http: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return self.spec.base_url or ""

    def _session(self) -> aiohttp.ClientSession:
        """The pool's session, made on first use (inside the worker's event loop)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the pool's slots bound it
                headers=self._auth,
                timeout=self._timeout,
                read_bufsize=_LINE_MAX,
                # The environment's proxy, read once: aiohttp's trust_env reads it, and
                # ~/.netrc in a thread, on every request.
                proxy=_proxy_for(self._base),
            )
        return self._http

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
        chat = request.api != "completions"
        body: dict[str, Any] = dict(request.params or {})  # they pass through as they are
        body.pop("stream", None)
        body.pop("stream_options", None)
        body["model"] = request.model_id
        if chat:
            body["messages"] = request.messages or [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt
        priority = self.spec.engine_priority_of(request.priority)
        if priority is not None:  # the engine orders its own queue as we do
            body["priority"] = priority
        # Streamed from the server also when the client does not stream (the pool's
        # stream_upstream): a server notices a closed connection at its next token, so a
        # cancelled or preempted run frees the server's slot at once.
        streamed = on_text is not None or self.spec.stream_upstream
        if streamed:
            body.update(stream=True, stream_options={"include_usage": True})
        payload = json.dumps(body).encode()
        path = "/chat/completions" if chat else "/completions"
        given: list[str] = []  # text already given to ``on_text``

        async def give(text: str) -> None:
            given.append(text)
            await on_text(text)  # type: ignore[misc]

        for attempt in (1, 2):
            try:
                return await self._post(path, payload, chat, streamed,
                                        give if on_text is not None else None)  # fmt: skip
            except TimeoutError:
                raise UpstreamUnreachable(
                    f"{self.endpoint} did not answer within {self.spec.timeout_seconds:g} s"
                ) from None
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                # Once more on a fresh connection, before any text went out: a kept-alive
                # connection the server closed as it was reused fails this way, and says
                # nothing of the server. A server that is gone fails the second time too.
                if attempt == 2 or given:
                    raise UpstreamUnreachable(
                        f"{self.endpoint} did not answer: {_said(exc)}"
                    ) from None
                log.info("%s: %s; trying once more", self.endpoint, _said(exc))
        raise AssertionError("unreachable")

    async def _post(
        self, path: str, payload: bytes, chat: bool, streamed: bool, on_text: TextSink | None
    ) -> Completion:
        url = self._base + path
        async with self._session().post(
            url, data=payload, headers=_JSON, allow_redirects=False
        ) as reply:
            if not 200 <= reply.status < 300:
                raise UpstreamError(
                    f"{self.endpoint} answered {reply.status}: "
                    f"{_reason(await reply.read(), reply.reason)}"
                )
            if streamed:
                return await self._streamed(reply, chat, on_text)
            return self._whole(await reply.read(), chat)

    def _whole(self, raw: bytes, chat: bool) -> Completion:
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = (choice["message"].get("content") if chat else choice.get("text")) or ""
            return Completion(text, choice.get("finish_reason"), _usage(reply.get("usage")))
        except (ValueError, LookupError, TypeError, AttributeError):
            raise UpstreamError(
                f"{self.endpoint} answered without a completion: {_clipped(raw)}"
            ) from None

    async def _streamed(
        self, reply: aiohttp.ClientResponse, chat: bool, on_text: TextSink | None
    ) -> Completion:
        """Give each piece of text to ``on_text`` (if any) as it comes; the whole, as a
        completion. An error event fails the call (text already given stays given)."""
        pieces: list[str] = []
        finish_reason, usage = None, None
        events = EventData()
        async for line in reply.content:
            data = events.feed(line)
            if data is None:
                continue
            if data.startswith("[DONE]"):
                await reply.read()  # the body's end, so the connection is kept
                break
            chunk = self._event(data)
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            choices = chunk.get("choices")
            if not choices:
                continue
            choice = choices[0]
            text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if text:
                pieces.append(text)
                if on_text is not None:
                    await on_text(text)
            finish_reason = choice.get("finish_reason") or finish_reason
        return Completion("".join(pieces), finish_reason, usage)

    def _event(self, data: str) -> dict[str, Any]:
        """One streamed chunk; an error event raises the server's message."""
        try:
            chunk = json.loads(data)
        except ValueError:
            raise UpstreamError(
                f"{self.endpoint} streamed an event that is not JSON: {_clipped(data)}"
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"{self.endpoint} streamed an event that is not an object")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"{self.endpoint} failed mid-stream: {message or 'an error event'}")
        return chunk

    async def server_report(self) -> ServerReport | None:
        """What the server says of its capacity (for ``slots = "auto"``): llama.cpp's
        ``/props`` (``total_slots``), else the running and waiting requests of its
        Prometheus ``/metrics`` (vLLM, SGLang, llama.cpp with ``--metrics``); None when it
        says neither (or does not answer)."""
        root = self._base.removesuffix("/v1")
        try:
            status, props = await self._get(root + "/props")
            if status == 200:
                total = json.loads(props).get("total_slots")
                if isinstance(total, int) and total > 0:
                    return ServerReport(total_slots=total)
            status, metrics = await self._get(root + "/metrics")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return None
        if status != 200:
            return None
        return _load_of(metrics.decode("utf-8", "replace"))

    async def healthy(self) -> bool:
        """The server lists its models: it is up (``/v1/models``, which every
        OpenAI-compatible server has)."""
        try:
            status, _ = await self._get(self._base + "/models")
        except (aiohttp.ClientError, TimeoutError):
            return False
        return 200 <= status < 300

    async def _get(self, url: str) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=min(5.0, self.spec.timeout_seconds))
        async with self._session().get(url, timeout=timeout) as reply:
            return reply.status, await reply.read()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _proxy_for(url: str) -> str | None:
    """The proxy ``HTTP_PROXY``/``HTTPS_PROXY`` name for ``url``, unless ``NO_PROXY``
    leaves it out."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass_environment(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _usage(usage: Any) -> dict[str, int] | None:
    """The token counts, and the prompt tokens the server found in its cache
    (``cached_tokens``, where it says: vLLM, SGLang, llama.cpp)."""
    if not isinstance(usage, dict):
        return None
    counts = {name: usage[name] for name in _USAGE_FIELDS if isinstance(usage.get(name), int)}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if isinstance(cached, int):
        counts["cached_tokens"] = cached
    return counts


def _reason(body: bytes, phrase: str | None) -> str:
    """The server's error message (OpenAI's shape, or a bare ``message``), else its body,
    else the status's phrase."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error", parsed)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    return _clipped(body) if body.strip() else phrase or "no reason given"


def _clipped(text: bytes | str, limit: int = 200) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _said(exc: BaseException) -> str:
    """What an aiohttp error says, or its kind where it says nothing."""
    return str(exc) or type(exc).__name__


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
