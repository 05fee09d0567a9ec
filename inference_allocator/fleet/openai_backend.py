"""A pool behind an OpenAI-compatible server (vLLM, TGI, SGLang, llama.cpp, Ollama), driven
with the official ``openai`` client: one ``AsyncOpenAI`` per pool, keep-alive connections,
the pool's timeout, no silent retries (a failure answers the request and the pool's health
check decides when the server is back).
"""

from __future__ import annotations

from typing import Any

import openai
from openai import AsyncOpenAI

from .backends import Completion, UpstreamError, UpstreamUnreachable
from .spec import PoolSpec

# Generation parameters the chat completions API names; any other passes through as-is.
_NAMED = {
    "max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
    "frequency_penalty", "n", "logit_bias", "user",
}  # fmt: skip
_USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens"}


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
        named = {k: v for k, v in (params or {}).items() if k in _NAMED}
        extra = {k: v for k, v in (params or {}).items() if k not in _NAMED}
        try:
            reply = await self.client.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": prompt}],
                extra_body=extra or None,
                **named,
            )
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise UpstreamUnreachable(f"{self.endpoint} did not answer: {exc}") from None
        except openai.APIStatusError as exc:
            raise UpstreamError(
                f"{self.endpoint} answered {exc.status_code}: {_reason(exc)}"
            ) from None
        choice = reply.choices[0]
        usage = None
        if reply.usage is not None:
            usage = reply.usage.model_dump(include=_USAGE_FIELDS)
        return Completion(choice.message.content or "", choice.finish_reason, usage)

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


def _reason(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return exc.message
