"""What writes the service's answers: a model behind an OpenAI-compatible endpoint (a vLLM server for the
checkpoint, or any URL), or the checkpoint in this process (`batching.BatchingGenerator`).

Each streams the answer to one `AnswerRequest` as `Delta`s, prompting as in fine-tuning (`answer_messages`), greedy.
`ContextBudget` counts a prompt's tokens with the checkpoint's tokenizer, so the service can drop the lowest-ranked
documents of a request that would not fit the model's context (an endpoint without a checkpoint has no budget: its
server refuses what does not fit, and the service passes that refusal on as a 400).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from raft_assets.inference.answering import AnswerRequest, answer_messages, greedy_params, prompt_ids
from raft_assets.llm.client import Endpoint
from raft_assets.serving.protocol import ApiError

BATCH_WINDOW_S = 0.02  # the in-process batch takes the requests that come within this of each other (bench_serve.py)


@dataclass(frozen=True)
class Delta:
    """A piece of the answer; the last one of a stream has its finish reason ("stop", or "length" at the limit)."""

    text: str
    finish_reason: str | None = None


class Generator(Protocol):
    name: str  # what answers, for the log and the fingerprint

    def coming(self) -> AbstractContextManager[None]:
        """Held while a request is prepared for this generator (a batching generator waits for it)."""
        ...

    def stream(self, request: AnswerRequest, max_new_tokens: int) -> AsyncIterator[Delta]:
        """The answer, piece by piece; raises ApiError when the model cannot be asked."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ContextBudget:
    """A checkpoint's tokenizer and context length: whether a prompt and its answer fit."""

    tokenizer: Any  # a transformers tokenizer with the checkpoint's chat template
    context_length: int

    def fits(self, request: AnswerRequest, max_new_tokens: int) -> bool:
        (ids,) = prompt_ids(self.tokenizer, [request])
        return len(ids) + max_new_tokens <= self.context_length


class EndpointGenerator:
    """An OpenAI-compatible endpoint, streamed. Its errors become the service's: a refused request (400, too long
    for the model's context) stays a 400, anything else is a 502 (the service is fine, its model is not)."""

    def __init__(self, endpoint: Endpoint) -> None:
        import openai  # here: 0.8 s to import, which the raft-assets command need not wait for

        self.endpoint = endpoint
        self.name = f"endpoint:{endpoint.model}"
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.urls[0],
            api_key=endpoint.api_key,
            max_retries=endpoint.max_retries,
            timeout=endpoint.timeout_s,
        )

    async def stream(self, request: AnswerRequest, max_new_tokens: int) -> AsyncIterator[Delta]:
        import openai

        try:
            chunks = await self.client.chat.completions.create(
                model=self.endpoint.model,
                messages=answer_messages(request),
                stream=True,
                **greedy_params(max_new_tokens),
            )
            async for chunk in chunks:
                if chunk.choices:
                    choice = chunk.choices[0]
                    if choice.delta.content or choice.finish_reason:
                        yield Delta(choice.delta.content or "", choice.finish_reason)
        except openai.BadRequestError as error:
            raise ApiError(400, f"The model refused the request: {error.message}", "upstream_rejected") from error
        except openai.APIError as error:
            raise ApiError(502, f"The model's endpoint failed: {error.message}", "upstream_error") from error

    def coming(self) -> AbstractContextManager[None]:
        return nullcontext()  # the endpoint batches what it gets

    async def aclose(self) -> None:
        await self.client.close()
