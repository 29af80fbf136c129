"""Answering questions with a model, as it was trained: the requests, answers and the endpoint backend.

Every backend asks with the fine-tuning prompt, `chat_messages(question, documents_block(documents).strip())`,
so a RAFT model sees retrieved documents exactly as in training. A request without documents (the "no
context" systems) gets the same prompt with an empty context: the model is asked the same way and only the
documents differ, which is what a with/without-context comparison should measure. Decoding is greedy.

- `TransformersBackend` (`inference/local_model.py`): a local Hugging Face checkpoint, in process, batched
  `generate`; a module of its own, since torch and transformers take seconds to import;
- `EndpointBackend`: any OpenAI-compatible endpoint (a vLLM server for the checkpoint, the 70B reference)
  through `ChatClient`, with its retries, concurrency and on-disk reply cache.

`stream_endpoint` and `TransformersBackend.stream` yield one answer piece by piece, for the chatbot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from raft_assets.contracts.prompts import Prompt, load_prompts
from raft_assets.contracts.raft_format import chat_messages, documents_block, without_document_tags
from raft_assets.llm.client import ChatClient, Endpoint, RequestFailed, Usage
from raft_assets.llm.reply_cache import ReplyCache

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_NEW_TOKENS = 512
# What a `raft-assets serve` endpoint is asked (`EndpointBackend(prompt=SERVED_PROMPT)`): the question alone, since
# the service retrieves the documents and builds the fine-tuning prompt itself.
SERVED_PROMPT = Prompt(name="served", version=1, system="", user="{question}", params={})


@dataclass(frozen=True)
class AnswerRequest:
    """A question and the documents to answer it from (none: no context)."""

    question: str
    documents: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    """The model's reply, how long computing it took and why it failed (None when it did not).

    A `cached` answer was computed by an earlier run: its `seconds` are that run's (None when it did not time it).
    """

    text: str
    seconds: float | None
    error: str | None = None
    cached: bool = False


class AnswerBackend(Protocol):
    name: str

    async def answer_all(self, requests: list[AnswerRequest]) -> list[Answer]:
        """One answer per request, in the requests' order."""
        ...


def prompt_values(request: AnswerRequest) -> dict[str, str]:
    """The `raft_chat` prompt's values: the question and the documents in `<DOCUMENT>` tags (tags in them defused)."""
    documents = [without_document_tags(document) for document in request.documents]
    return {"question": request.question, "context": documents_block(documents).strip()}


def answer_messages(request: AnswerRequest) -> list[dict[str, str]]:
    """The chat messages of the request: system and user, exactly as in fine-tuning."""
    values = prompt_values(request)
    return chat_messages(values["question"], values["context"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, requests: list[AnswerRequest]) -> list[list[int]]:
    """Token ids of each request's prompt: the chat template with the assistant's header, as in training."""
    texts = [
        tokenizer.apply_chat_template(answer_messages(request), tokenize=False, add_generation_prompt=True)
        for request in requests
    ]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def greedy_params(max_new_tokens: int) -> dict[str, Any]:
    """Sampling parameters of an OpenAI-compatible request: greedy, at most `max_new_tokens`."""
    return {"temperature": 0.0, "max_tokens": max_new_tokens}


class EndpointBackend:
    """An OpenAI-compatible endpoint through `ChatClient`: concurrent requests, retries and the reply cache.

    A request that finally fails is an Answer with its error; the other answers of the batch are unaffected.
    Each reply's time (from asking to the reply, waiting for a free slot included) is kept with it in the cache
    by the client, and a cached reply comes back with that time. `usage` holds the last `answer_all`'s token and
    request accounting.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        cache: ReplyCache,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        name: str = "",
        prompt: Prompt | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.cache = cache
        self.name = name or f"endpoint:{endpoint.model}"
        asked = prompt or load_prompts()["raft_chat"]
        self.prompt: Prompt = dataclasses.replace(asked, params=greedy_params(max_new_tokens))
        self.usage = Usage()

    async def answer_all(self, requests: list[AnswerRequest]) -> list[Answer]:
        async with ChatClient(self.endpoint, self.cache) as client:
            answers = await asyncio.gather(*(self._answer(client, request) for request in requests))
        self.usage = client.usage
        return list(answers)

    async def _answer(self, client: ChatClient, request: AnswerRequest) -> Answer:
        started = time.perf_counter()
        try:
            reply = await client.reply(self.prompt, prompt_values(request), self.prompt.params)
        except RequestFailed as error:
            return Answer("", time.perf_counter() - started, str(error))
        return Answer(reply.text, reply.seconds, cached=reply.cached)


def stream_endpoint(
    endpoint: Endpoint, request: AnswerRequest, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> Iterator[str]:
    """The answer to one request from the endpoint (the first, with replicas), streamed; not cached.

    Raises openai.APIError when the request finally fails (after the SDK's retries).
    """
    import openai  # here: 0.8 s to import, for the chat command's endpoint alone

    client = openai.OpenAI(
        base_url=endpoint.urls[0],
        api_key=endpoint.api_key,
        max_retries=endpoint.max_retries,
        timeout=endpoint.timeout_s,
    )
    with client:
        stream = client.chat.completions.create(
            model=endpoint.model, messages=answer_messages(request), stream=True, **greedy_params(max_new_tokens)
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
