"""Retrieval-augmented answering for the service: the top-k chunks for a question, as many of them as fit the model's
context (the lowest-ranked dropped first), the answer streamed from the generator, and what goes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from raft_assets.inference.answering import AnswerRequest
from raft_assets.retrieval.retriever import RetrievedChunk, Retriever
from raft_assets.serving.generators import ContextBudget, Delta, Generator
from raft_assets.serving.protocol import ApiError, ServiceInfo
from raft_assets.serving.sources import answer_sources, is_refusal

RETRIEVAL_WINDOW_S = 0.005  # how long the first question waits for others to embed with (bench_serve.py)


@dataclass(frozen=True)
class Prepared:
    """A question with the documents it is answered from; `dropped`: retrieved chunks that did not fit."""

    request: AnswerRequest
    chunks: list[RetrievedChunk]
    dropped: int
    context_length: int | None

    def truncation(self) -> dict[str, Any] | None:
        """The `truncation` field: None when every retrieved chunk was given to the model."""
        if not self.dropped:
            return None
        return {
            "documents_dropped": self.dropped,
            "documents_kept": len(self.chunks),
            "context_length": self.context_length,
            "reason": "the prompt with every retrieved document and the answer's tokens exceeds the model's context: "
            "the lowest-ranked documents were left out",
        }

    def extras(self, answer: str) -> dict[str, Any]:
        """What the service adds to the OpenAI response (in its last chunk when streaming)."""
        return {
            "sources": answer_sources(answer, self.chunks),
            "truncation": self.truncation(),
            "refusal": is_refusal(answer),
        }


class RagService:
    """A retriever (None: no documents) and a generator, with the context budget of the model when it is known."""

    def __init__(
        self,
        retriever: Retriever | None,
        generator: Generator,
        info: ServiceInfo,
        budget: ContextBudget | None = None,
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.info = info
        self.budget = budget
        self._questions: list[tuple[str, asyncio.Future[list[RetrievedChunk]]]] = []  # waiting for retrieval
        self._retrieving: asyncio.Task[None] | None = None  # embedding the waiting questions

    async def prepare(self, question: str, max_new_tokens: int) -> Prepared:
        """The question's documents, as many as fit; ApiError 400 when not even the question alone fits."""
        with self.generator.coming():
            chunks = await self._retrieve(question)
            return await asyncio.to_thread(self._fit, question, chunks, max_new_tokens)

    async def _retrieve(self, question: str) -> list[RetrievedChunk]:
        """The question's top k chunks. Questions that arrive within a few milliseconds of each other, or while others
        are embedded, are embedded together, in one batch: under load, one forward pass of the embedding model serves
        many requests, and they reach the generator together, to be answered in one batch too."""
        if self.retriever is None:
            return []
        found: asyncio.Future[list[RetrievedChunk]] = asyncio.get_running_loop().create_future()
        self._questions.append((question, found))
        if self._retrieving is None:
            self._retrieving = asyncio.get_running_loop().create_task(self._retrieve_waiting())
        return await found

    async def _retrieve_waiting(self) -> None:
        try:
            while self._questions:
                await asyncio.sleep(RETRIEVAL_WINDOW_S)
                batch, self._questions = self._questions, []
                try:
                    results = await asyncio.to_thread(self.retriever.top_k, [q for q, _ in batch], self.info.top_k)
                except Exception as error:  # noqa: BLE001 (each waiting request fails with it)
                    results = [error] * len(batch)
                for (_, found), result in zip(batch, results, strict=True):
                    if found.done():  # its request went away
                        continue
                    if isinstance(result, Exception):
                        found.set_exception(result)
                    else:
                        found.set_result(result)
        finally:
            self._retrieving = None

    def _fit(self, question: str, chunks: list[RetrievedChunk], max_new_tokens: int) -> Prepared:
        context_length = self.budget.context_length if self.budget else None
        for kept in range(len(chunks), -1, -1):
            request = AnswerRequest(question, [chunk.text for chunk in chunks[:kept]])
            if self.budget is None or self.budget.fits(request, max_new_tokens):
                return Prepared(request, chunks[:kept], len(chunks) - kept, context_length)
        raise ApiError(
            400,
            f"The question does not fit the model's context of {context_length} tokens with {max_new_tokens} new "
            "tokens, even without documents: shorten it or ask for fewer tokens (max_tokens).",
            "context_length_exceeded",
        )

    def answer(self, prepared: Prepared, max_new_tokens: int) -> AsyncIterator[Delta]:
        return self.generator.stream(prepared.request, max_new_tokens)
