"""A client for any OpenAI-compatible chat endpoint, used as hard as it allows.

`Endpoint` is the configuration (the `llm` and `judge` resources build it); `ChatClient` is one
materialization's connection: it keeps as many requests in flight at each replica as the replica keeps
answering faster (`concurrency.ReplicaPool`: adaptive, up to `max_concurrency` over all replicas, or pinned at it),
within optional requests- and tokens-per-minute limits and a token budget. 408/409/5xx replies, timeouts and
dropped connections are retried as the openai SDK retries them (`transport.py`); a 429 or 503 (the server is full or over
its rate limit) comes back to the client instead, which lowers its level, waits out Retry-After and sends the
request again, without a limit on the attempts while the server keeps saying "later" (up to `timeout_s` times
`max_retries + 1` of waiting). Every reply is cached on disk as it arrives.

Chat requests go to aiohttp directly (`transport.py`: the SDK's retries, timeouts and authentication, without its
per-request layers): about 0.5 ms of CPU per request on this project's 2-core machine, so one process drives over
1,000 requests/s (benchmarks/RESULTS.md). The SDK checks the endpoint (`GET /models`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import aiohttp
from aiolimiter import AsyncLimiter

from raft_assets.contracts.prompts import Prompt
from raft_assets.llm.concurrency import ConcurrencyLog, ReplicaPool
from raft_assets.llm.reply_cache import CachedReply, ReplyCache, request_key
from raft_assets.llm.transport import (
    OVERLOADED,
    ChatTransport,
    ConnectionProblem,
    StatusError,
    new_session,
    retry_after_s,
)

if TYPE_CHECKING:  # openai is imported where an endpoint is used: 0.8 s of every process's start otherwise
    import openai

DEFAULT_MODEL = "meta-llama/Meta-Llama-3-70B-Instruct"
DEFAULT_MAX_CONCURRENCY = 1024  # an upper bound: the level adapts below it (see concurrency.py)
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 6
CHARS_PER_TOKEN = 4  # for estimates before a request is sent
PREFLIGHT_TIMEOUT_S = 15.0  # per attempt of the endpoint check (GET /models)
REDACTED = "REDACTED"  # in place of the API key, in an error message that echoes it
DEFAULT_RETRY_AFTER_S = 1.0  # when a 429/503 does not say how long to wait
MAX_OVERLOAD_WAIT_S = 60.0  # the longest Retry-After of a 429/503 that is waited (a longer one: this long)


class RequestFailed(Exception):
    """An item with no reply; `status` is "error" (the request finally failed), "over_budget" (not sent), or
    "skipped" (the extractive stand-in has nothing to say about it: not a failure)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class EndpointUnusable(Exception):
    """The endpoint cannot serve this stage at all (unreachable, the key refused, the model not served): no request
    is worth sending, so the stage stops at once with the reason instead of failing every item."""


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool  # from the reply cache: computed (and paid for) by an earlier request
    seconds: float | None = None  # from asking to the reply, in the request that computed it (None: not timed)


@dataclass
class Usage:
    """Token and request accounting of one materialization (retries are not counted twice)."""

    requests: int = 0  # replies from the endpoints
    cache_hits: int = 0  # replies from the cache: paid for in an earlier run
    http_attempts: int = 0  # HTTP requests sent, retries included
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    overloaded: int = 0  # 429/503 replies: retried by the client after lowering its level
    concurrency: ConcurrencyLog | None = None  # the levels of requests in flight (None: nothing is sent)

    @property
    def retries(self) -> int:
        return max(0, self.http_attempts - self.requests - self.failed)

    def concurrency_line(self) -> str:
        """For the progress line: the level of requests in flight now, and how many are ("" when nothing is sent)."""
        return self.concurrency.describe() if self.concurrency else ""

    def metadata(self) -> dict[str, int | str]:
        return {
            **{f"llm_{field.name}": getattr(self, field.name) for field in fields(self) if field.name != "concurrency"},
            "llm_retries": self.retries,
            **(self.concurrency.metadata() if self.concurrency else {}),
        }


@dataclass(frozen=True)
class Plan:
    """What a batch of first attempts will cost, known before any is sent."""

    requests: int
    cached: int
    tokens: int  # estimated upper bound for the requests not cached
    budget: int | None = None

    def describe(self) -> str:
        text = f"{self.requests} requests, {self.cached} cached, ≈{self.tokens:,} tokens to send at most"
        if self.budget is not None:
            stop = ": the run will stop at the budget" if self.tokens > self.budget else ""
            text += f" (budget {self.budget:,}{stop})"
        return text


class TokenBudget:
    """Refuses a request whose estimate, with what is spent and in flight, would pass the limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.spent = 0
        self.reserved = 0

    def reserve(self, estimate: int) -> bool:
        if self.limit is not None and self.spent + self.reserved + estimate > self.limit:
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: int, actual: int) -> None:
        self.reserved -= estimate
        self.spent += actual


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint (vLLM, TGI, a cloud API), or several replicas of one, and how hard to use it."""

    urls: tuple[str, ...]
    model: str = DEFAULT_MODEL
    api_key: str = field(default="EMPTY", repr=False)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # most requests in flight at once, over all replicas
    adaptive_concurrency: bool = True  # False: always max_concurrency in flight (a shared server's share)
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # counts prompt + max_tokens per request
    timeout_s: float = DEFAULT_TIMEOUT_S  # per HTTP attempt
    max_retries: int = DEFAULT_MAX_RETRIES
    token_budget: int | None = None  # most tokens one client may spend; requests past it are not sent

    @classmethod
    def at(cls, base_url: str, **settings: Any) -> Endpoint:
        """The endpoint of `base_url`: one URL, or comma-separated replicas."""
        return cls(tuple(url.strip() for url in base_url.split(",") if url.strip()), **settings)


def _per_minute_limiter(per_minute: int) -> AsyncLimiter:
    """A leaky bucket that spreads `per_minute` over the minute instead of allowing it all in a burst."""
    if per_minute >= 60:
        return AsyncLimiter(per_minute / 60, 1)
    return AsyncLimiter(1, 60 / per_minute)


def retry_after(headers: Mapping[str, str]) -> float:
    """Seconds a 429/503 asks to wait, within 0 to 60 s (1 s when it does not say)."""
    asked = retry_after_s(headers)
    return DEFAULT_RETRY_AFTER_S if asked is None else min(max(asked, 0.0), MAX_OVERLOAD_WAIT_S)


def connection_problem(error: openai.APIConnectionError, timeout_s: float) -> str:
    """What went wrong below HTTP. The SDK calls a refused connection through its aiohttp transport a timeout
    (a `ConnectTimeout` of its HTTP layer, "Cannot connect to host ..."): a failed connection, not a slow server."""
    import openai

    if isinstance(error, openai.APITimeoutError) and type(error.__cause__).__name__ != "ConnectTimeout":
        return f"timed out after {timeout_s:g} s"
    return f"connection failed: {error.__cause__ or error}"


class ChatClient:
    """Sends chat requests for one materialization; use as `async with`, inside the event loop."""

    stand_in = None  # a model answers

    def __init__(self, config: Endpoint, cache: ReplyCache) -> None:
        self.config = config
        self.model = config.model
        self.cache = cache
        self.usage = Usage()
        self.budget = TokenBudget(config.token_budget)
        self._rpm = _per_minute_limiter(config.requests_per_minute) if config.requests_per_minute else None
        self._tpm = AsyncLimiter(config.tokens_per_minute, 60) if config.tokens_per_minute else None
        self._clients: list[openai.AsyncOpenAI] = []  # the SDK's, for the check of the endpoints
        self._session: aiohttp.ClientSession | None = None
        self._transports: list[ChatTransport] = []  # the chat requests', one per replica
        self._pool: ReplicaPool | None = None
        self._endpoints_checked: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChatClient:
        import openai

        config = self.config
        self._clients = [
            openai.AsyncOpenAI(
                base_url=url,
                api_key=config.api_key,
                max_retries=config.max_retries,
                timeout=config.timeout_s,
                http_client=openai.DefaultAioHttpClient(),
            )
            for url in config.urls
        ]
        self._session = new_session(config.max_concurrency)  # room for every request the pool lets through
        self._transports = [
            ChatTransport(self._session, url, config.api_key, config.timeout_s, config.max_retries, self._count_attempt)
            for url in config.urls
        ]
        self._pool = ReplicaPool(len(config.urls), config.max_concurrency, config.adaptive_concurrency)
        self.usage.concurrency = self._pool.log
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._clients:
            await client.close()
        if self._session is not None:
            await self._session.close()

    def _count_attempt(self) -> None:
        self.usage.http_attempts += 1

    def key(self, prompt: Prompt, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        return request_key(self.model, messages, params, prompt.version)

    @staticmethod
    def estimate_tokens(messages: list[dict[str, str]], params: dict[str, Any]) -> int:
        """An upper-bound guess before sending: prompt characters / 4 plus `max_tokens`."""
        prompt_chars = sum(len(message["content"]) for message in messages)
        return prompt_chars // CHARS_PER_TOKEN + int(params.get("max_tokens", 512))

    def plan(self, prompt: Prompt, batch: list[dict[str, Any]]) -> Plan:
        cached = tokens = 0
        for values in batch:
            messages = prompt.messages(**values)
            if self.cache.get(self.key(prompt, messages, prompt.params)) is not None:
                cached += 1
            else:
                tokens += self.estimate_tokens(messages, prompt.params)
        return Plan(len(batch), cached, tokens, self.budget.limit)

    async def reply(self, prompt: Prompt, values: dict[str, Any], params: dict[str, Any]) -> ChatReply:
        messages = prompt.messages(**values)
        key = self.key(prompt, messages, params)
        if (hit := self.cache.get(key)) is not None:
            self.usage.cache_hits += 1
            self.usage.cached_tokens += hit.prompt_tokens + hit.completion_tokens
            return ChatReply(hit.text, hit.prompt_tokens, hit.completion_tokens, cached=True, seconds=hit.seconds)
        estimate = self.estimate_tokens(messages, params)
        if not self.budget.reserve(estimate):
            self.usage.failed += 1
            raise RequestFailed("over_budget", f"not sent: the token budget of {self.budget.limit:,} would be exceeded")
        started = time.perf_counter()
        try:
            reply = await self._send(messages, params, estimate)
        except RequestFailed:
            self.budget.settle(estimate, 0)
            self.usage.failed += 1
            raise
        reply = dataclasses.replace(reply, seconds=time.perf_counter() - started)
        self.budget.settle(estimate, reply.prompt_tokens + reply.completion_tokens)
        self.usage.requests += 1
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        cached = CachedReply(reply.text, reply.prompt_tokens, reply.completion_tokens, reply.seconds)
        self.cache.put(key, self.model, cached)
        return reply

    async def check_endpoints(self) -> None:
        """Ask every replica once which models it serves (`GET /models`, as OpenAI-compatible servers answer);
        raise EndpointUnusable when one cannot be reached, refuses the key, or does not serve the model.

        A server without the route (404) or failing it (5xx) is given the benefit of the doubt: its chat requests
        say more. Two attempts and at most 15 s each, so a wrong URL stops a stage within seconds.
        """
        import openai

        for url, client in zip(self.config.urls, self._clients, strict=True):
            checking = client.with_options(max_retries=1, timeout=min(self.config.timeout_s, PREFLIGHT_TIMEOUT_S))
            try:
                served = [model.id async for model in checking.models.list()]
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise EndpointUnusable(
                    self.redact(f"{url} refused the API key (HTTP {error.status_code}): {str(error.message)[:200]}")
                ) from None
            except openai.APIConnectionError as error:  # timeouts included
                raise EndpointUnusable(
                    self.redact(f"{url} cannot be reached: {connection_problem(error, checking.timeout)}")
                ) from None
            except openai.APIStatusError:
                continue
            if self.model not in served:
                raise EndpointUnusable(
                    f"{url} does not serve the model {self.model!r}; it serves: {', '.join(served) or 'nothing'}"
                )

    async def _send(self, messages: list[dict[str, str]], params: dict[str, Any], estimate: int) -> ChatReply:
        assert self._pool is not None, "use ChatClient as `async with`"
        if self._endpoints_checked is None:  # before the first request is sent: a run from the cache sends none
            self._endpoints_checked = asyncio.ensure_future(self.check_endpoints())
        if not self._endpoints_checked.done():  # (a shield per request would cost every request a future)
            await asyncio.shield(self._endpoints_checked)
        self._endpoints_checked.result()  # EndpointUnusable, for every request
        body = self.request_body(messages, params)
        patience = time.monotonic() + self.config.timeout_s * (self.config.max_retries + 1)
        while True:
            index = await self._pool.acquire()
            sent_at = None  # set when answered
            try:
                if self._rpm:
                    await self._rpm.acquire()
                if self._tpm:
                    await self._tpm.acquire(min(estimate, self._tpm.max_rate))
                started = time.monotonic()  # after the client's own rate limits
                response = await self._transports[index].post(body)
                sent_at = started
                break
            except StatusError as error:
                if error.status not in OVERLOADED or time.monotonic() > patience:
                    raise RequestFailed("error", self._describe(error)) from None
                self.usage.overloaded += 1
                self._pool.overloaded(index, error.status, retry_after(error.headers), started)
            except ConnectionProblem as error:
                raise RequestFailed("error", self._describe(error)) from None
            finally:
                self._pool.release(index, sent_at)
        if not isinstance(response, dict):
            raise RequestFailed("error", f"the endpoint's reply is not a JSON chat completion: {str(response)[:200]}")
        choices = response.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content") or ""
        usage = response.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", estimate - int(params.get("max_tokens", 0)))
        completion_tokens = usage.get("completion_tokens", len(text) // CHARS_PER_TOKEN)
        return ChatReply(text, prompt_tokens, completion_tokens, cached=False)

    def _describe(self, error: StatusError | ConnectionProblem) -> str:
        """Why a request failed, for the records and logs; the key is cut out should the endpoint echo it."""
        retries = f"after {self.config.max_retries} retries"
        if isinstance(error, ConnectionProblem):  # timeouts included
            return self.redact(f"{error} ({retries})")
        if error.status in OVERLOADED:
            retries = f"still after {self.config.timeout_s * (self.config.max_retries + 1):g} s of retries"
        return self.redact(f"HTTP {error.status} ({retries}): {str(error)[:300]}")

    def request_body(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """The chat completion request as sent, online or as a line of a batch."""
        return {"model": self.model, "messages": messages, **params}

    def redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, REDACTED) if key and key != "EMPTY" else text
