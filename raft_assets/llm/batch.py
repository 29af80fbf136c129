"""The OpenAI Batch API as a way to fill the reply cache: many providers bill it at half price, answering within 24 h.

`BatchFirst` is the Replier of an endpoint in `mode: batch`: an endpoint's `ChatClient` whose batch of first attempts
goes through the Batch API before any is sent online. `run_batch` announces the batch (`plan`) before it asks; the
first request then waits while the requests not in the reply cache are written as JSONL lines (custom_id: the cache
key), uploaded (`POST /files`, purpose "batch") and submitted (`POST /batches`), polled (`GET /batches/{id}`) and
their output fetched (`GET /files/{id}/content`) into the reply cache, where the online path finds every reply. The
batch ids are kept in a state file until then, so that a killed run polls the same batches instead of paying again.
What a batch did not answer (a failed or expired line), and every retry with a new seed, is asked online.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from logging import Logger
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raft_assets.contracts.prompts import Prompt
from raft_assets.files import write_text_atomically
from raft_assets.llm.asking import attempt_params
from raft_assets.llm.client import ChatClient, ChatReply, EndpointUnusable, Plan, Usage
from raft_assets.llm.reply_cache import CachedReply

if TYPE_CHECKING:  # openai is imported when a batch is sent (see client.py)
    import openai
    from openai.types import Batch

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"  # the only window the Batch API offers
MAX_LINES = 50_000  # the Batch API's limits on one input file
MAX_BYTES = 200_000_000
FINAL = ("completed", "failed", "expired", "cancelled")  # after validating, in_progress, finalizing (or cancelling)


class BatchError(Exception):
    """The Batch API failed beyond the SDK's retries: the run stops; the batch ids stay in the state file."""


@dataclass
class BatchReport:
    """What the Batch API did in one materialization, for its metadata."""

    ids: list[str] = field(default_factory=list)  # submitted by this run, or by a killed one and polled by this one
    requests: int = 0  # lines in those batches
    replies: int = 0  # lines answered, now in the reply cache
    failed: int = 0  # lines without a reply (failed, expired): asked online
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "batch_ids": ", ".join(self.ids) or "none",
            **{f"batch_{name}": getattr(self, name) for name in ("requests", "replies", "failed")},
            "batch_prompt_tokens": self.prompt_tokens,
            "batch_completion_tokens": self.completion_tokens,
        }


def cached_reply(line: dict[str, Any]) -> CachedReply | None:
    """The reply of an output or error file's line, or None when the line has none (an error, a non-200 status)."""
    response = line.get("response") or {}
    if line.get("error") or response.get("status_code") != 200 or not isinstance(response.get("body"), dict):
        return None
    body = response["body"]
    choices = body.get("choices") or [{}]
    text = (choices[0].get("message") or {}).get("content")
    if not isinstance(text, str):
        return None
    usage = body.get("usage") or {}
    return CachedReply(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


def input_files(lines: list[str]) -> Iterator[list[str]]:
    """The lines in files within the Batch API's limits on lines and bytes, in order."""
    group: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode())
        if group and (len(group) == MAX_LINES or size + length > MAX_BYTES):
            yield group
            group, size = [], 0
        group.append(line)
        size += length
    if group:
        yield group


class BatchFirst:
    """A ChatClient whose announced batch goes through the Batch API first (see the module's docstring).

    `state_file` keeps the ids of the batches submitted and not fetched yet; `log` hears what the batches do.
    """

    stand_in = None  # a model answers

    def __init__(self, client: ChatClient, state_file: Path, poll_interval_s: float, log: Logger) -> None:
        self.client = client
        self.state_file = state_file
        self.poll_interval_s = poll_interval_s
        self.log = log
        self.report = BatchReport()
        self._announced: tuple[Prompt, list[dict[str, Any]], Plan] | None = None
        self._filled: asyncio.Future[None] | None = None
        self._reserved: dict[str, int] = {}  # key -> tokens reserved in the client's budget for its line

    @property
    def model(self) -> str:
        return self.client.model

    @property
    def usage(self) -> Usage:
        return self.client.usage

    def plan(self, prompt: Prompt, batch: list[dict[str, Any]]) -> Plan:
        """The client's plan; and the batch that its first request waits for the Batch API to answer."""
        plan = self.client.plan(prompt, batch)
        self._announced, self._filled = (prompt, batch, plan), None
        return plan

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply:
        if self._announced is not None and self._filled is None:
            self._filled = asyncio.ensure_future(self._fill(*self._announced))
        if self._filled is not None:
            await asyncio.shield(self._filled)
        return await self.client.reply(prompt, values, params)

    # -- the batch step --------------------------------------------------------------------------------------

    async def _fill(self, prompt: Prompt, batch: list[dict[str, Any]], plan: Plan) -> None:
        """Polls the batches a killed run left, then submits and polls the first attempts still not cached."""
        left = self._saved_ids()
        if not left and plan.cached == plan.requests:
            return  # a run from the cache sends nothing
        await self.client.check_endpoints()  # a wrong URL, key or model stops the stage with its reason, as online
        import openai

        config = self.client.config
        async with openai.AsyncOpenAI(
            base_url=config.urls[0], api_key=config.api_key, max_retries=config.max_retries, timeout=config.timeout_s
        ) as api:
            if left:
                self.log.info(f"resuming {len(left)} batch(es) an earlier run submitted: {', '.join(left)}")
            seen = set().union(*await asyncio.gather(*(self._finish(api, batch_id) for batch_id in left)))
            lines = self._lines(prompt, batch, seen)
            if lines:
                ids = [await self._submit(api, group) for group in input_files(lines)]
                await asyncio.gather(*(self._finish(api, batch_id) for batch_id in ids))
        for estimate in self._reserved.values():  # lines no batch answered nor reported
            self.client.budget.settle(estimate, 0)
        self._reserved.clear()
        self.state_file.unlink(missing_ok=True)

    def _lines(self, prompt: Prompt, batch: list[dict[str, Any]], seen: set[str]) -> list[str]:
        """The JSONL lines of the first attempts not in the reply cache nor in a batch already finished, each once,
        within the client's token budget (a request past it is left to the online path, which refuses it)."""
        params = attempt_params(prompt, 0)
        lines = []
        for values in batch:
            messages = prompt.messages(**values)
            key = self.client.key(prompt, messages, params)
            if key in seen or key in self._reserved or self.client.cache.get(key) is not None:
                continue
            estimate = self.client.estimate_tokens(messages, params)
            if not self.client.budget.reserve(estimate):
                continue
            self._reserved[key] = estimate
            body = self.client.request_body(messages, params)
            line = {"custom_id": key, "method": "POST", "url": CHAT_ENDPOINT, "body": body}
            lines.append(json.dumps(line, ensure_ascii=False) + "\n")
        return lines

    async def _submit(self, api: openai.AsyncOpenAI, lines: list[str]) -> str:
        import openai

        try:
            upload = await api.files.create(file=("requests.jsonl", "".join(lines).encode()), purpose="batch")
            batch = await api.batches.create(
                input_file_id=upload.id, endpoint=CHAT_ENDPOINT, completion_window=COMPLETION_WINDOW
            )
        except openai.NotFoundError as error:
            raise EndpointUnusable(
                f"{self.client.config.urls[0]} offers no Batch API (HTTP 404: {self._redact(error.message)}); use mode: online"
            ) from None
        except openai.APIError as error:
            raise BatchError(
                f"submitting a batch to {self.client.config.urls[0]} failed: {self._redact(str(error))}"
            ) from None
        self._save_ids([*self._saved_ids(), batch.id])
        self.report.ids.append(batch.id)
        self.report.requests += len(lines)
        self.log.info(f"batch {batch.id}: submitted {len(lines)} requests (results within {COMPLETION_WINDOW})")
        return batch.id

    async def _finish(self, api: openai.AsyncOpenAI, batch_id: str) -> set[str]:
        """Polls the batch until it is over, puts its replies in the cache; the keys of the lines it reported."""
        import openai

        try:
            batch = await self._poll(api, batch_id)
            if batch_id not in self.report.ids:  # submitted by a killed run
                self.report.ids.append(batch_id)
                self.report.requests += batch.request_counts.total if batch.request_counts else 0
            if batch.status == "failed":
                problems = "; ".join(error.message or "" for error in (batch.errors.data or [])) if batch.errors else ""
                self.log.warning(f"batch {batch_id} failed: {problems[:500] or 'no reason given'}")
            files = [file_id for file_id in (batch.output_file_id, batch.error_file_id) if file_id]
            contents = [(await api.files.content(file_id)).text for file_id in files]
        except openai.APIError as error:
            raise BatchError(
                f"batch {batch_id}: the Batch API failed ({self._redact(str(error))}); its id stays in {self.state_file}, "
                "so the next run polls it again"
            ) from None
        seen: set[str] = set()
        replies = failed = 0
        for content in contents:
            for line in map(json.loads, content.splitlines()):
                key = line["custom_id"]
                seen.add(key)
                reply = cached_reply(line)
                self._settle(key, reply)
                if reply is None:
                    failed += 1
                    continue
                self.client.cache.put(key, self.model, reply)
                replies += 1
                self.report.prompt_tokens += reply.prompt_tokens
                self.report.completion_tokens += reply.completion_tokens
        self.report.replies += replies
        self.report.failed += failed
        self.log.info(f"batch {batch_id}: {batch.status}; {replies} replies cached, {failed} failed lines go online")
        return seen

    async def _poll(self, api: openai.AsyncOpenAI, batch_id: str) -> Batch:
        """The batch once it is over; its status and counts logged as they change."""
        shown = None
        while True:
            batch = await api.batches.retrieve(batch_id)
            counts = batch.request_counts
            state = (batch.status, counts.completed, counts.failed) if counts else (batch.status, 0, 0)
            if state != shown:
                total = counts.total if counts else "?"
                self.log.info(f"batch {batch_id}: {state[0]}, {state[1]}/{total} done, {state[2]} failed")
                shown = state
            if batch.status in FINAL:
                return batch
            await asyncio.sleep(self.poll_interval_s)

    def _redact(self, text: str) -> str:
        """An error's text, shortened, the key cut out should the endpoint echo it."""
        return self.client.redact(text)[:300]

    def _settle(self, key: str, reply: CachedReply | None) -> None:
        if (estimate := self._reserved.pop(key, None)) is not None:
            self.client.budget.settle(estimate, reply.prompt_tokens + reply.completion_tokens if reply else 0)

    def _saved_ids(self) -> list[str]:
        if not self.state_file.is_file():
            return []
        return list(json.loads(self.state_file.read_text(encoding="utf-8"))["batches"])

    def _save_ids(self, ids: list[str]) -> None:
        write_text_atomically(self.state_file, json.dumps({"batches": ids}))
