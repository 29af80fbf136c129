"""The checkpoint in this process, answering concurrent requests in batches: the service's backend on a CPU.

Requests wait in a queue; a worker thread takes the first, collects the others as long as they keep coming (each
within `window_s` of the one before) or are announced (`coming`: the service is retrieving their documents), up to
`max_batch`, and answers them with one batched, greedy `generate` of `TransformersBackend` (left-padded, so each
row is what it would be alone). A streamer hands each step's tokens to their rows: every request gets its new text
as it is generated, and its end as soon as its row stops (an end-of-turn token, its own `max_new_tokens`), not when
the batch does. A row whose client went away is stopped at the next step. Requests that arrive while a batch runs
form the next one, so under load batches fill up by themselves, and an idle service answers after `window_s`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from raft_assets.inference.answering import AnswerRequest
from raft_assets.inference.local_model import TransformersBackend
from raft_assets.serving.generators import BATCH_WINDOW_S, Delta
from raft_assets.serving.protocol import ApiError

MAX_WAITS = 10  # a batch waits for more requests for at most this many windows
INCOMPLETE = "\ufffd"  # what decoding gives for the first bytes of a character split over several tokens


@dataclass
class Row:
    """One request in a batch: its prompt, its limit, where its pieces go (an asyncio queue of the request's loop)."""

    ids: list[int]
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Delta | BaseException]
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # the text handed out so far
    done: bool = False
    cancelled: bool = False  # the request went away: stop computing its row

    def emit(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)

    def advance(self, text: str) -> None:
        """Hand out what `text` (the decoded tokens) adds, unless it ends inside a character."""
        if not text.endswith(INCOMPLETE) and len(text) > len(self.sent):
            self.emit(Delta(text[len(self.sent) :]))
            self.sent = text

    def finish(self, text: str, reason: str) -> None:
        self.done = True
        self.emit(Delta(text[len(self.sent) :] if text.startswith(self.sent) else "", reason))


class RowStreamer(BaseStreamer):
    """Receives every step's new token of each row from `generate` and decodes it into the row's text."""

    def __init__(self, rows: list[Row], tokenizer, stop_ids: set[int]) -> None:
        self.rows = rows
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompts
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            if row.done:
                continue
            if token in self.stop_ids:
                row.finish(self.decode(row), "stop")
                continue
            row.tokens.append(token)
            text = self.decode(row)
            if len(row.tokens) >= row.max_new_tokens:
                row.finish(text, "length")
            else:
                row.advance(text)

    def decode(self, row: Row) -> str:
        return self.tokenizer.decode(row.tokens, skip_special_tokens=True)

    def end(self) -> None:
        """The batch is over: a row still open was cut by the batch (its request went away)."""
        for row in self.rows:
            if not row.done:
                row.finish(self.decode(row), "length")


class RowsDone(StoppingCriteria):
    """Stops each row at its own `max_new_tokens`, and a row whose request went away at once."""

    def __init__(self, rows: list[Row], prompt_length: int) -> None:
        self.rows = rows
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        done = [row.cancelled or generated >= row.max_new_tokens for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class BatchingGenerator:
    """`TransformersBackend` behind a request queue, answering in batches of up to `max_batch` (see the module)."""

    def __init__(self, backend: TransformersBackend, max_batch: int, window_s: float = BATCH_WINDOW_S) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.backend = backend
        self.name = backend.name
        self.max_batch = max_batch
        self.window_s = window_s
        self.stop_ids = set(backend.generation_config.eos_token_id)
        self.batch_sizes: list[int] = []  # of every batch computed (the tests look at them)
        self._pending: queue.Queue[Row | None] = queue.Queue()
        self._coming = 0  # requests being prepared (changed on the event loop, read by the worker)
        self._worker = threading.Thread(target=self._work, name="raft-serve-batches", daemon=True)
        self._worker.start()

    @contextmanager
    def coming(self) -> Iterator[None]:
        """A request for this generator is being prepared (retrieval): the batch being collected waits for it."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1

    async def stream(self, request: AnswerRequest, max_new_tokens: int) -> AsyncIterator[Delta]:
        (ids,) = self.backend.prompt_ids([request])
        row = Row(ids, max_new_tokens, asyncio.get_running_loop(), asyncio.Queue())
        self._pending.put(row)
        try:
            while True:
                item = await row.out.get()
                if isinstance(item, BaseException):
                    raise ApiError(500, f"Generation failed: {item}", "generation_failed") from item
                yield item
                if item.finish_reason:
                    return
        finally:
            row.cancelled = True

    async def aclose(self) -> None:
        self._pending.put(None)
        await asyncio.to_thread(self._worker.join)

    def _work(self) -> None:
        while (rows := self._collect()) is not None:
            rows = [row for row in rows if not row.cancelled]
            if not rows:
                continue
            self.batch_sizes.append(len(rows))
            try:
                self._generate(rows)
            except Exception as error:  # noqa: BLE001 (each waiting request gets it; the worker goes on)
                for row in rows:
                    if not row.done:
                        row.done = True
                        row.emit(error)

    def _collect(self) -> list[Row] | None:
        """The next batch: the first request waited for, then more as long as they keep coming (each within
        `window_s` of the one before) or are being prepared (`coming`), for at most `MAX_WAITS` windows in all;
        None: closed."""
        first = self._pending.get()
        if first is None:
            return None
        rows = [first]
        deadline = time.monotonic() + MAX_WAITS * self.window_s
        while len(rows) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                row = self._pending.get(timeout=min(self.window_s, left))
            except queue.Empty:
                if self._coming:
                    continue
                break
            if row is None:
                self._pending.put(None)  # closing: this batch still runs, then the worker stops
                break
            rows.append(row)
        return rows

    def _generate(self, rows: list[Row]) -> None:
        prompt_length = max(len(row.ids) for row in rows)
        self.backend.generate(
            [row.ids for row in rows],
            streamer=RowStreamer(rows, self.backend.tokenizer, self.stop_ids),
            stopping_criteria=StoppingCriteriaList([RowsDone(rows, prompt_length)]),
            max_new_tokens=max(row.max_new_tokens for row in rows),
        )
